"""A running signer on loopback against the fake API server, with a small cluster in it.

The cluster: node proxies ``nodeproxy/nodeproxy-a`` (node-a) and
``nodeproxy/nodeproxy-b`` (node-b), both running as the ``nodeproxy``
service account; on node-a the pods of ``shop/webserver`` and
``shop/reporting``, on node-b ``shop/auth-api`` and ``shop/database``, plus a
finished ``shop/batch`` job pod on node-a (it must not count). Tokens come
from ``api.token_reviews.issue(<pod>, <namespace>)``.

The signer serves as ``localhost`` (its certificate's DNS name), so clients
connect to ``https://localhost:<port>`` and check that name.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import trio

from nodeproxy.discovery.kubernetes.access import ApiAccess
from nodeproxy.signer.kubeapi import KubeApi
from nodeproxy.signer.server import Limits, serve_signer
from nodeproxy.signer.service import Signer
from nodeproxy.tls.ca import CertificateAuthority, utc_now
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.k8s_objects import pod

NODE_PROXIES = frozenset({("nodeproxy", "nodeproxy")})


def seed_cluster(api: FakeApiServer) -> None:
    for name, node, ip in (
        ("nodeproxy-a", "node-a", "10.0.1.2"),
        ("nodeproxy-b", "node-b", "10.0.2.2"),
    ):
        api.add("pods", pod(name, ip, node=node, ns="nodeproxy", service_account="nodeproxy"))
    for name, node, sa, ip in (
        ("web-1", "node-a", "webserver", "10.0.1.10"),
        ("report-1", "node-a", "reporting", "10.0.1.11"),
        ("auth-1", "node-b", "auth-api", "10.0.2.10"),
        ("db-1", "node-b", "database", "10.0.2.11"),
    ):
        api.add("pods", pod(name, ip, node=node, ns="shop", service_account=sa))
    batch = pod("batch-1", "10.0.1.12", node="node-a", ns="shop", service_account="batch")
    batch["status"]["phase"] = "Succeeded"
    api.add("pods", batch)


@dataclass
class RunningSigner:
    signer: Signer
    port: int
    scope: trio.CancelScope

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def running_signer(
    ca: CertificateAuthority,
    api: FakeApiServer,
    limits: Limits | None = None,
    port: int = 0,
    clock: Callable[[], datetime] = utc_now,
) -> AsyncIterator[RunningSigner]:
    """``nodeproxy signer`` in-process: the real server, its API client and the CA.

    ``clock``: the wall clock certificates are dated by (a test's, on the mock clock).
    """
    api_client = KubeApi(ApiAccess(server=api.url), timeout=5.0)
    signer = Signer(ca, api_client, NODE_PROXIES, clock=clock)
    async with trio.open_nursery() as nursery:
        serve = partial(serve_signer, signer, ["localhost"], "127.0.0.1", port, limits or Limits())
        bound = await nursery.start(serve)
        yield RunningSigner(signer, bound, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


def client_ssl(ca: CertificateAuthority) -> ssl.SSLContext:
    """What any HTTPS client needs to talk to the signer: trust the mesh CA."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return ctx


def write_token(directory: Path, name: str, token: str) -> str:
    path = directory / f"{name}.token"
    path.write_text(token + "\n")
    return str(path)
