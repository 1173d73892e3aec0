"""How to reach the Kubernetes API: the in-cluster service account, or a kubeconfig.

Inside the DaemonSet the proxy uses what the kubelet mounts for every pod:
``KUBERNETES_SERVICE_HOST``/``PORT`` name the API server and
``/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}``
hold the credentials. The token is a bound, expiring token that the kubelet
rewrites in place (about hourly), so it is *read again for every request*
instead of once at start-up: a reflector opens a connection only per list or
watch, a few times per minute at most, and a stale token would turn into 401s
an hour after the pod started. For development a kubeconfig works too (server,
CA, token or client certificate; the current or a named context); exec and
auth-provider plugins are refused with a clear message rather than half-supported.

Everything here is plain data and file reading; the trio client in ``http.py``
asks it for the address, the ``Authorization`` header and an ``SSLContext``.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from nodeproxy.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_TOKEN_BYTES = 64 * 1024  # tokens are ~1 KiB; refuse to read a runaway file whole


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate to it."""

    server: str  # "https://10.96.0.1:443"; "http://..." only for tests and local proxies
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM
    token: str | None = None  # a fixed token (kubeconfig)
    token_file: str | None = None  # re-read on every request (service account, rotated)
    client_cert_data: bytes | None = None  # PEM; files are loaded through a private temp dir
    client_key_data: bytes | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure_skip_tls_verify: bool = False
    namespace: str = "default"  # the pod's own namespace (informational)

    def __repr__(self) -> str:  # never print the token
        auth = "token file" if self.token_file else "token" if self.token else "no token"
        if self.client_cert_data or self.client_cert_file:
            auth += " + client cert"
        return f"<ApiAccess {self.server} [{auth}]>"

    @property
    def tls(self) -> bool:
        return urlsplit(self.server).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.server)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def bearer_token(self) -> str | None:
        """The current token: the file is read again each time (it rotates)."""
        if self.token_file is None:
            return self.token
        with open(self.token_file, "rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
        if len(data) > MAX_TOKEN_BYTES:
            raise ValueError(f"token file {self.token_file} is larger than {MAX_TOKEN_BYTES} bytes")
        return data.decode().strip() or None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the API server against the configured CA."""
        ctx = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert_file and self.client_key_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        elif self.client_cert_data and self.client_key_data:
            with tempfile.TemporaryDirectory() as tmp:  # 0700: only we can read the key
                cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert.write_bytes(self.client_cert_data)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.client_key_data)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def in_cluster(
    env: Mapping[str, str] | None = None, sa_dir: Path = SERVICE_ACCOUNT_DIR
) -> ApiAccess:
    """The service-account access every pod gets (paths injectable for tests)."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError(
            "discovery.kubernetes",
            "not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are unset "
            "(use a kubeconfig for development)",
        )
    token = sa_dir / "token"
    if not token.is_file():
        raise ConfigError("discovery.kubernetes", f"service account token {token} is missing")
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ApiAccess(
        server=f"https://{hostport}",
        ca_file=str(sa_dir / "ca.crt"),
        token_file=str(token),
        namespace=namespace,
    )


def from_kubeconfig(path: str | Path, context: str | None = None) -> ApiAccess:
    """Access described by a kubeconfig file's current (or the named) context."""
    path = Path(path)
    field = "discovery.kubernetes.kubeconfig"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(field, f"cannot read kubeconfig {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(field, f"{path} is not a kubeconfig")
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError(field, f"{path} has no current-context and none was given")
    ctx = _named(doc, "contexts", "context", name, field)
    cluster = _named(doc, "clusters", "cluster", ctx.get("cluster"), field)
    user = _named(doc, "users", "user", ctx.get("user"), field) if ctx.get("user") else {}
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise ConfigError(field, f"user {ctx.get('user')!r}: {plugin} plugins are unsupported")
    base = path.parent

    def file(key: str, where: dict[str, Any]) -> str | None:
        value = where.get(key)
        return str(base / value) if value else None

    def data(key: str, where: dict[str, Any]) -> bytes | None:
        value = where.get(key)
        return base64.b64decode(value) if value else None

    return ApiAccess(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_file=file("certificate-authority", cluster),
        ca_data=data("certificate-authority-data", cluster),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=file("tokenFile", user),
        client_cert_file=file("client-certificate", user),
        client_key_file=file("client-key", user),
        client_cert_data=data("client-certificate-data", user),
        client_key_data=data("client-key-data", user),
        namespace=str(ctx.get("namespace", "default")),
    )


def _named(doc: dict[str, Any], section: str, key: str, name: Any, field: str) -> dict[str, Any]:
    for item in doc.get(section) or ():
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(key)
            return value if isinstance(value, dict) else {}
    raise ConfigError(field, f"no {key} named {name!r} in the kubeconfig")
