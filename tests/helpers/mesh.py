"""A two-node mesh on loopback: two real proxies (node-a, node-b) in one test.

Both proxies run in-process through ``run_app`` (the real app: config loader,
certificates, outbound and inbound listeners) with a mesh CA made by
``init_ca`` in a temp directory. The "pods" are ``backend()`` servers on
127.0.0.1; which node each is on is the ``node:`` of its endpoint. The
calling pods are told apart by source address: a client bound to
127.0.0.2 is ``shop/webserver``, 127.0.0.3 is ``shop/reporting``, and any
other address (127.0.0.1) has no identity.

The seed's example is the policy: ``webserver`` may call ``auth-api`` (and
the same-node ``cache``); everything else is denied by default.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.tls.ca import CertificateAuthority, init_ca, utc_now
from nodeproxy.tls.identity import SpiffeId
from tests.helpers.backends import Backend, backend

WEB_IP, REPORTING_IP = "127.0.0.2", "127.0.0.3"
WEB = SpiffeId.workload("shop", "webserver")
REPORTING = SpiffeId.workload("shop", "reporting")

CONFIG = """
node_name: {node}
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
services:
  - name: auth-api
    namespace: shop
    endpoints: [{{address: "127.0.0.1:{auth}", node: node-b}}]
  - name: database
    namespace: shop
    endpoints: [{{address: "127.0.0.1:{database}", node: node-b}}]
  - name: cache
    namespace: shop
    endpoints: [{{address: "127.0.0.1:{cache}", node: node-a}}]
mesh:
  ca_dir: {ca_dir}
  inbound: "127.0.0.1:0"
  enforce_outbound: {enforce_outbound}
  nodes:
    node-a: "127.0.0.1:{a_inbound}"
    node-b: "127.0.0.1:{b_inbound}"
  workloads:
    - {{source: {web_ip}, namespace: shop, service_account: webserver, node: node-a}}
    - {{source: {reporting_ip}, namespace: shop, service_account: reporting, node: node-a}}
  policy:
    default_action: deny
    rules:
      - name: webserver-to-auth
        action: allow
        from: ["spiffe://cluster.local/ns/shop/sa/webserver"]
        to: ["auth-api.shop"]
      - name: webserver-to-cache
        action: allow
        from: ["spiffe://cluster.local/ns/shop/sa/webserver"]
        to: ["cache.shop"]
"""


@dataclass
class Node:
    name: str
    handle: AppHandle

    @property
    def outbound(self) -> int:
        return self.handle.listener_ports["outbound"]

    @property
    def inbound(self) -> int:
        return self.handle.listener_ports["inbound"]

    def counter(self, name: str, **match: str) -> float:
        return self.handle.runtime.stats.sum_counter(name, **match)


@dataclass
class Mesh:
    ca: CertificateAuthority
    ca_dir: Path
    a: Node
    b: Node
    auth: Backend
    database: Backend
    cache: Backend

    def pods_requests(self) -> int:
        return sum(len(b.requests) for b in (self.auth, self.database, self.cache))


async def start_node(nursery: trio.Nursery, text: str) -> AppHandle:
    config = load_config_text(text, env={})
    handle: AppHandle = await nursery.start(
        lambda task_status: run_app(config, handle_signals=False, task_status=task_status)
    )
    return handle


@asynccontextmanager
async def two_node_mesh(
    tmp_path: Path,
    *,
    enforce_outbound: bool = False,
    http_tunnel: str = "auto",
    issuer: Callable[[str], str] | None = None,
    ca: CertificateAuthority | None = None,
) -> AsyncIterator[Mesh]:
    """node-b (auth-api, database) and node-a (cache, the callers), both running.

    ``issuer(node)``: the mesh section's issuer lines for that node (e.g. a
    ``signer``); default ``ca_dir`` (a local CA made here, or ``ca``'s).
    ``http_tunnel``: ``mesh.http_tunnel`` ("off": the per-request hop node-b parses).
    """
    ca_dir = tmp_path / "mesh-ca"
    if ca is None:  # 30 days back: room for "expired" test certs
        ca = init_ca(ca_dir, now=utc_now() - timedelta(days=30))
    template = CONFIG if issuer is None else CONFIG.replace("ca_dir: {ca_dir}", "{issuer}")
    tunnel = f"  http_tunnel: {http_tunnel}\n  enforce_outbound:"
    template = template.replace("  enforce_outbound:", tunnel)

    def lines(node: str) -> str:
        return issuer(node) if issuer is not None else ""

    async with AsyncExitStack() as stack:
        auth = await stack.enter_async_context(backend())
        database = await stack.enter_async_context(backend())
        cache = await stack.enter_async_context(backend())
        nursery = await stack.enter_async_context(trio.open_nursery())
        fields: dict[str, Any] = dict(
            auth=auth.port,
            database=database.port,
            cache=cache.port,
            ca_dir=ca_dir,
            enforce_outbound=str(enforce_outbound).lower(),
            web_ip=WEB_IP,
            reporting_ip=REPORTING_IP,
        )
        b = await start_node(
            nursery,
            template.format(
                node="node-b", issuer=lines("node-b"), a_inbound=1, b_inbound=1, **fields
            ),
        )
        b_inbound = b.listener_ports["inbound"]
        a = await start_node(
            nursery,
            template.format(
                node="node-a", issuer=lines("node-a"), a_inbound=1, b_inbound=b_inbound, **fields
            ),
        )
        try:
            yield Mesh(ca, ca_dir, Node("node-a", a), Node("node-b", b), auth, database, cache)
        finally:
            for handle in (a, b):  # drain: both apps return and close every pooled connection
                handle.runtime.drain.start("test over")
            nursery.cancel_scope.deadline = trio.current_time() + 10


def client_from(source_ip: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``source_ip`` (a pod address)."""
    transport = httpx.AsyncHTTPTransport(local_address=source_ip)
    return httpx.AsyncClient(transport=transport, timeout=10)


def pin(cert_pem: bytes) -> str:
    """curl's ``--pinnedpubkey`` value for a certificate's public key."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()
