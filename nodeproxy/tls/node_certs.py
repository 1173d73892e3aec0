"""This node's certificates: minted at start, renewed by one rotation task.

A node proxy holds one certificate for its own node identity (presented by
the inbound listener) and one per workload identity of the pods on its node
(presented by outbound connections made on that workload's behalf). It never
mints for pods elsewhere: a compromised node can then only speak as the
workloads it already runs (docs/security.md, "where the signing key lives").

``MeshCertificates`` is owned by the rotation task: ``refresh(now)`` asks the
``CertStore`` for a plan, mints what is missing or due, and swaps each
identity's ``RotatingContext``. Connections read ``server_context()`` /
``client_context(id)`` once at connection setup and keep that context, so a
rotation never drops an established connection. The task sleeps on trio's
clock until the next renewal; certificate validity itself is wall-clock time,
read through an injectable ``clock`` (``ca.utc_now``) so tests can move it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import structlog
import trio

from nodeproxy.tls.ca import CAError, CertificateAuthority, issue_workload_cert, utc_now
from nodeproxy.tls.context import RotatingContext, TLSConfigError
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.store import CertStore, IssuedCert

log = structlog.get_logger("nodeproxy.tls")

RETRY_AFTER = 10.0  # seconds: a failed renewal is retried this soon (a third of life is left)
MAX_SLEEP = 3600.0  # wake at least hourly, so a wall-clock jump is noticed within the hour


class MeshCertificates:
    """The node's CertStore and the SSL contexts built from it."""

    def __init__(
        self,
        ca: CertificateAuthority,
        node_name: str,
        workloads: Iterable[SpiffeId],
        *,
        lifetime: timedelta = timedelta(hours=24),
        renew_fraction: float = 2 / 3,
    ) -> None:
        self.ca = ca
        self.node_id = SpiffeId.node(node_name, ca.trust_domain)
        self.wanted: frozenset[SpiffeId] = frozenset({self.node_id, *workloads})
        self.lifetime = lifetime
        self.store = CertStore(renew_fraction)
        self._server: RotatingContext | None = None
        self._clients: dict[SpiffeId, RotatingContext] = {}
        self.rotations = 0  # certificates replaced after the first issue

    def __repr__(self) -> str:
        return (
            f"<MeshCertificates {self.node_id} [{len(self.store)}/{len(self.wanted)} identities "
            f"| {self.rotations} rotations] {self.store!r}>"
        )

    def refresh(self, now: datetime) -> list[SpiffeId]:
        """Mint every missing or due certificate at ``now``; returns the identities minted."""
        plan = self.store.plan(now, self.wanted)
        for sid in plan.issue:
            cert_pem, key_pem = issue_workload_cert(self.ca, sid, now=now, lifetime=self.lifetime)
            issued = IssuedCert.from_pem(cert_pem, key_pem)
            self._install(issued)
            if self.store.put(issued) is not None:
                self.rotations += 1
            log.info(
                "certificate_issued",
                identity=str(sid),
                serial=f"{issued.serial:x}",
                not_after=issued.not_after.isoformat(),
            )
        for sid in plan.drop:
            self.store.remove(sid)
            self._clients.pop(sid, None)
        return list(plan.issue)

    def renew_all(self, now: datetime) -> None:
        """Re-issue every certificate now, due or not (e.g. after a CA key change)."""
        for sid in sorted(self.wanted):
            self.store.remove(sid)
        self.rotations += len(self.refresh(now))

    def _install(self, issued: IssuedCert) -> None:
        sid = issued.spiffe_id
        if sid == self.node_id:
            if self._server is None:
                self._server = RotatingContext("server", issued, self.ca.cert_pem)
            else:
                self._server.rotate(issued)
            return
        client = self._clients.get(sid)
        if client is None:
            self._clients[sid] = RotatingContext("client", issued, self.ca.cert_pem)
        else:
            client.rotate(issued)

    def server_context(self) -> ssl.SSLContext:
        """The inbound listener's context (node identity) for a new connection."""
        if self._server is None:
            raise RuntimeError("refresh() has not run: no node certificate yet")
        return self._server.current

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext | None:
        """The context presenting ``identity``'s certificate; None if this node holds none."""
        client = self._clients.get(identity)
        return None if client is None else client.current

    def issued(self, identity: SpiffeId) -> IssuedCert | None:
        """The certificate currently presented for ``identity``."""
        return self.store.get(identity)

    def seconds_until_renewal(self, now: datetime) -> float:
        """How long the rotation task may sleep (bounded to [0, MAX_SLEEP])."""
        nxt = self.store.next_renewal()
        if nxt is None:
            return 0.0
        return min(max((nxt - now).total_seconds(), 0.0), MAX_SLEEP)

    async def run(self, clock: Callable[[], datetime] = utc_now) -> None:
        """The rotation task: renew at ``renew_fraction`` of life, until cancelled."""
        while True:
            try:
                self.refresh(clock())
                delay = self.seconds_until_renewal(clock())
            except (CAError, TLSConfigError) as exc:
                log.error("certificate_renewal_failed", error=str(exc), retry_s=RETRY_AFTER)
                delay = RETRY_AFTER
            await trio.sleep(max(delay, 0.001))
