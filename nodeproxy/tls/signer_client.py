"""Certificates from the signer: the node keeps its keys and asks for signatures.

With ``mesh.signer`` set a node proxy holds only the CA certificate. For the
identities it needs it makes fresh keys, sends CSRs to the signer with its
projected service-account token (re-read for every request: the kubelet
rotates it) and checks each answer before using it: the certificate must be
signed by the CA the node trusts, for the identity asked, over the key the
node made. The signer's own certificate must chain to that CA and name the
signer URL's host (``tls.context.signer_context``); once the node holds its
node certificate it presents it, so the connection is mutual TLS.

Outcomes: certificates and per-identity refusals (a pod that left the node)
are answers; anything else (unreachable, timeout, 5xx, 401, a bad answer) is
``SignerUnavailable``, which the rotation task retries with backoff while the
certificates it holds keep serving.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from nodeproxy.signer.protocol import (
    MAX_CSRS,
    SIGN_PATH,
    ExchangeError,
    Refusal,
    SignRequest,
    SignResponse,
    error_reason,
    exchange,
)
from nodeproxy.tls.ca import PrivateKey, generate_key, private_key_pem
from nodeproxy.tls.context import TLSConfigError, signer_context
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.store import IssuedCert

MAX_TOKEN_BYTES = 64 * 1024


class SignerUnavailable(Exception):
    """No usable answer from the signer (the message says why); retry later."""


@dataclass
class SignOutcome:
    issued: list[IssuedCert] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    error: str | None = None  # a later batch failed: what was issued before still counts


class SignerClient:
    """Asks the signer at ``url`` for certificates (``https://host:port``)."""

    def __init__(
        self, url: str, token_file: str, ca_pem: bytes, trust_domain: str, *, timeout: float
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.token_file = token_file
        self.ca_pem = ca_pem
        self.ca_cert = x509.load_pem_x509_certificate(ca_pem)
        self.trust_domain = trust_domain
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<SignerClient {self.url} [token {self.token_file}]>"

    async def sign(
        self, ids: Sequence[SpiffeId], *, lifetime: timedelta, client: IssuedCert | None
    ) -> SignOutcome:
        """Certificates for ``ids`` (in batches of ``MAX_CSRS``), presenting ``client``."""
        outcome = SignOutcome()
        for start in range(0, len(ids), MAX_CSRS):
            batch = ids[start : start + MAX_CSRS]
            keys = {sid: generate_key("ec-p256") for sid in batch}
            request = SignRequest(
                tuple(csr_for(sid, key) for sid, key in keys.items()), int(lifetime.total_seconds())
            )
            try:
                status, body = await self._post(request.to_json(), client)
            except SignerUnavailable as exc:
                if not outcome.issued:
                    raise
                outcome.error = str(exc)
                return outcome
            if status == 403:
                _, reason, refused = error_reason(body)
                outcome.refused.extend(refused or [Refusal(str(s), reason) for s in batch])
                continue
            if status != 200:
                cause, reason, _ = error_reason(body)
                error = f"the signer answered {status} {cause}: {reason}"
                if not outcome.issued:
                    raise SignerUnavailable(error)
                outcome.error = error
                return outcome
            try:
                response = SignResponse.from_json(body)
            except (ValueError, KeyError, TypeError) as exc:
                raise SignerUnavailable(f"unreadable answer from the signer: {exc}") from None
            outcome.issued.extend(self._check(response, keys))
            outcome.refused.extend(response.refused)
        return outcome

    def _check(self, response: SignResponse, keys: dict[SpiffeId, PrivateKey]) -> list[IssuedCert]:
        out = []
        by_uri = {str(sid): (sid, key) for sid, key in keys.items()}
        for uri, cert_pem in response.issued:
            if uri not in by_uri:
                raise SignerUnavailable(f"the signer sent a certificate for {uri}, not asked for")
            sid, key = by_uri[uri]
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
                cert.verify_directly_issued_by(self.ca_cert)
                issued = IssuedCert.from_pem(cert_pem, private_key_pem(key))
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise SignerUnavailable(f"the certificate for {uri} is not usable: {exc}") from None
            if issued.spiffe_id != sid or cert.public_key() != key.public_key():
                raise SignerUnavailable(f"the certificate for {uri} is for another identity or key")
            out.append(issued)
        return out

    def _token(self) -> str:
        try:
            with open(self.token_file, "rb") as f:
                data = f.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            msg = f"cannot read the token {self.token_file}: {exc.strerror}"
            raise SignerUnavailable(msg) from None
        token = data.decode("utf-8", "replace").strip()
        if not token or len(data) > MAX_TOKEN_BYTES:
            raise SignerUnavailable(f"the token file {self.token_file} is empty or too large")
        return token

    async def _post(self, body: bytes, client: IssuedCert | None) -> tuple[int, bytes]:
        token = self._token()
        try:
            ctx = signer_context(
                "client", self.ca_pem, client.cert_pem if client else None,
                client.key_pem if client else None,
            )  # fmt: skip
        except TLSConfigError as exc:
            raise SignerUnavailable(str(exc)) from None
        headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Authorization", f"Bearer {token}"),
        ]
        authority = f"{self.host}:{self.port}"
        try:
            with trio.fail_after(self.timeout):
                tcp = await trio.open_tcp_stream(self.host, self.port)
                tls = trio.SSLStream(tcp, ctx, server_hostname=self.host)
                try:
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        why = exc.__cause__ or exc
                        raise SignerUnavailable(f"TLS with {self.url} failed: {why}") from None
                    return await exchange(
                        tls, method="POST", authority=authority, target=SIGN_PATH,
                        headers=headers, body=body,
                    )  # fmt: skip
                finally:
                    await trio.aclose_forcefully(tls)
        except trio.TooSlowError:
            raise SignerUnavailable(f"no answer from {self.url} in {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError, ExchangeError) as exc:
            raise SignerUnavailable(f"cannot reach {self.url}: {exc}") from None


def csr_for(sid: SpiffeId, key: PrivateKey) -> bytes:
    """A PEM CSR naming ``sid`` as its only URI SAN, signed by ``key``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sid.path[-64:])])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid.uri)]), critical=False
    )
    algorithm = None if not hasattr(key, "curve") else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)
