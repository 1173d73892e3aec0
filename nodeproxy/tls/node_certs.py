"""This node's certificates: minted at start, renewed by one rotation task.

A node proxy holds one certificate for its own node identity (presented by
the inbound listener) and one per workload identity of the pods on its node
(presented by outbound connections made on that workload's behalf). Where
they come from is one of two issuers:

- the local CA (``mesh.ca_dir``: the CA key on the node; development and
  single-host setups), minted synchronously in ``refresh``;
- the signer (``mesh.signer``: the node holds only the CA certificate and
  asks over the network, ``signer_client``), so a compromised node can get
  certificates only for the workloads the API says run on it
  (docs/security.md, "where the signing key lives").

``MeshCertificates`` is owned by the rotation task: ``renew(now)`` asks the
``CertStore`` for a plan, gets what is missing or due, and swaps each
identity's ``RotatingContext``. Connections read ``server_context()`` /
``client_context(id)`` once at connection setup and keep that context, so a
rotation never drops an established connection. The task sleeps on trio's
clock until the next renewal, a change of the wanted identities (``want``),
or the backoff after a failure (``renewal.Backoff``); certificate validity
itself is wall-clock time, read through an injectable ``clock``
(``ca.utc_now``) so tests can move it.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import structlog
import trio

from nodeproxy.stats.names import EARLIEST_EXPIRY, SIGNER_REQUESTS, SIGNER_UP
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.tls.ca import CAError, CertificateAuthority, issue_workload_cert, utc_now
from nodeproxy.tls.context import RotatingContext, TLSConfigError
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.renewal import Backoff, RenewalStatus
from nodeproxy.tls.signer_client import SignerClient, SignerUnavailable
from nodeproxy.tls.store import CertStore, IssuedCert

log = structlog.get_logger("nodeproxy.tls")

RETRY_AFTER = 10.0  # seconds: a failed local mint is retried this soon (a third of life is left)
MAX_SLEEP = 3600.0  # wake at least hourly, so a wall-clock jump is noticed within the hour


class MeshCertificates:
    """The node's CertStore and the SSL contexts built from it.

    ``issuer`` is the local CA, or a ``SignerClient`` (then ``stats`` gets the
    signer metrics and ``backoff`` paces retries).
    """

    def __init__(
        self,
        issuer: CertificateAuthority | SignerClient,
        node_name: str,
        workloads: Iterable[SpiffeId],
        *,
        lifetime: timedelta = timedelta(hours=24),
        renew_fraction: float = 2 / 3,
        backoff: Backoff | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.ca = issuer if isinstance(issuer, CertificateAuthority) else None
        self.signer = issuer if isinstance(issuer, SignerClient) else None
        self.ca_pem = issuer.cert_pem if isinstance(issuer, CertificateAuthority) else issuer.ca_pem
        self.node_id = SpiffeId.node(node_name, issuer.trust_domain)
        self.wanted: frozenset[SpiffeId] = frozenset({self.node_id, *workloads})
        self.lifetime = lifetime
        self.store = CertStore(renew_fraction)
        self.status = RenewalStatus()
        self.backoff = backoff or Backoff()
        self.stats = stats
        self._server: RotatingContext | None = None
        self._clients: dict[SpiffeId, RotatingContext] = {}
        self._wake = trio.Event()
        self._no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # every handshake fails
        self.rotations = 0  # certificates replaced after the first issue

    def __repr__(self) -> str:
        source = "local CA" if self.signer is None else f"signer {self.signer.url}"
        failing = f" | failing: {self.status.error}" if self.status.error else ""
        return (
            f"<MeshCertificates {self.node_id} [{len(self.store)}/{len(self.wanted)} identities "
            f"| {self.rotations} rotations | {source}{failing}] {self.store!r}>"
        )

    def want(self, wanted: frozenset[SpiffeId]) -> None:
        """The identities to hold from now on (discovery's pods changed); wakes the task."""
        if wanted != self.wanted:
            self.wanted = wanted
            self._wake.set()

    def refresh(self, now: datetime) -> list[SpiffeId]:
        """Mint every missing or due certificate at ``now`` with the local CA."""
        if self.ca is None:
            raise RuntimeError("refresh() mints locally; with a signer the task calls renew()")
        plan = self._plan(now)
        for sid in plan:
            cert_pem, key_pem = issue_workload_cert(self.ca, sid, now=now, lifetime=self.lifetime)
            self._accept(IssuedCert.from_pem(cert_pem, key_pem))
        return plan

    async def renew(self, now: datetime) -> list[SpiffeId]:
        """Get every missing or due certificate at ``now`` from the issuer."""
        if self.signer is None:
            return self.refresh(now)
        plan = self._plan(now)
        if not plan:
            self.status.succeeded(self.status.refused)
            return []
        node = self.store.get(self.node_id)
        client = node if node is not None and node.not_before <= now < node.not_after else None
        outcome = await self.signer.sign(plan, lifetime=self.lifetime, client=client)
        for issued in outcome.issued:
            self._accept(issued)
        for refusal in outcome.refused:
            log.warning("certificate_refused", identity=refusal.spiffe_id, reason=refusal.reason)
        if outcome.error is not None:  # a later batch failed: keep the first, retry the rest
            raise SignerUnavailable(outcome.error)
        self.status.succeeded({r.spiffe_id: r.reason for r in outcome.refused})
        return [issued.spiffe_id for issued in outcome.issued]

    def _plan(self, now: datetime) -> list[SpiffeId]:
        plan = self.store.plan(now, self.wanted)
        for sid in plan.drop:
            self.store.remove(sid)
            self._clients.pop(sid, None)
        return list(plan.issue)

    def _accept(self, issued: IssuedCert) -> None:
        self._install(issued)
        if self.store.put(issued) is not None:
            self.rotations += 1
        log.info(
            "certificate_issued",
            identity=str(issued.spiffe_id),
            serial=f"{issued.serial:x}",
            not_after=issued.not_after.isoformat(),
        )

    def renew_all(self, now: datetime) -> None:
        """Re-issue every certificate now, due or not (e.g. after a CA key change)."""
        for sid in sorted(self.wanted):
            self.store.remove(sid)
        self.rotations += len(self.refresh(now))

    def _install(self, issued: IssuedCert) -> None:
        sid = issued.spiffe_id
        if sid == self.node_id:
            if self._server is None:
                self._server = RotatingContext("server", issued, self.ca_pem)
            else:
                self._server.rotate(issued)
            return
        client = self._clients.get(sid)
        if client is None:
            self._clients[sid] = RotatingContext("client", issued, self.ca_pem)
        else:
            client.rotate(issued)

    def server_context(self) -> ssl.SSLContext:
        """The inbound listener's context (node identity) for a new connection.

        Before the first node certificate arrives (signer mode) this is a
        context without one: handshakes fail and are counted, nothing crashes.
        """
        if self._server is None:
            if self.signer is None:
                raise RuntimeError("refresh() has not run: no node certificate yet")
            return self._no_cert
        return self._server.current

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext | None:
        """The context presenting ``identity``'s certificate; None if this node holds none."""
        client = self._clients.get(identity)
        return None if client is None else client.current

    def issued(self, identity: SpiffeId) -> IssuedCert | None:
        """The certificate currently presented for ``identity``."""
        return self.store.get(identity)

    def readiness(self, now: datetime | None = None) -> tuple[bool, str] | None:
        """For ``/ready``: None when fine, else (still ready?, why)."""
        return self.status.readiness(self.store.get(self.node_id), now or utc_now())

    def seconds_until_renewal(self, now: datetime) -> float:
        """How long the rotation task may sleep (bounded to [0, MAX_SLEEP])."""
        if self.status.refused or self.wanted - set(self.store_ids()):
            return self.backoff.maximum  # identities still missing: ask again later
        nxt = self.store.next_renewal()
        if nxt is None:
            return 0.0
        return min(max((nxt - now).total_seconds(), 0.0), MAX_SLEEP)

    def store_ids(self) -> list[SpiffeId]:
        return [issued.spiffe_id for issued in self.store]

    async def run(
        self,
        clock: Callable[[], datetime] = utc_now,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The rotation task: renew at ``renew_fraction`` of life, until cancelled.

        ``started`` after the first attempt, successful or not: the app opens
        its listeners with certificates when the issuer answers, and without
        (``/ready`` says why) when it does not.
        """
        while True:
            self._wake = trio.Event()
            delay = await self._attempt(clock)
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            with trio.move_on_after(max(delay, 0.001)):
                await self._wake.wait()

    async def _attempt(self, clock: Callable[[], datetime]) -> float:
        try:
            await self.renew(clock())
        except (CAError, TLSConfigError, SignerUnavailable) as exc:
            self.status.failed(str(exc), clock())
            delay = RETRY_AFTER
            if self.signer is not None:
                delay = self.backoff.delay(self.status.failures, random.random())
            log.error("certificate_renewal_failed", error=str(exc), retry_s=round(delay, 3))
            self._report("error")
            return delay
        self._report("refused" if self.status.refused else "ok")
        return self.seconds_until_renewal(clock())

    def _report(self, result: str) -> None:
        if self.stats is None or self.signer is None:
            return
        self.stats.inc(SIGNER_REQUESTS, labels(result=result))
        self.stats.gauge_set(SIGNER_UP, (), 0.0 if result == "error" else 1.0)
        ends = [issued.not_after.timestamp() for issued in self.store]
        if ends:
            self.stats.gauge_set(EARLIEST_EXPIRY, (), min(ends))
