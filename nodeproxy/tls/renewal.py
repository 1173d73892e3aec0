"""How renewal is going: when to try again after a failure, and what ``/ready`` says.

Pure, like ``store``: the rotation task (``node_certs``) reports each attempt
here and sleeps for what ``Backoff`` says. The rules:

- a failed attempt (signer unreachable, timeout, 5xx, a bad answer) is
  retried after 1 s, 2 s, 4 s ... up to ``max_backoff`` (60 s by default),
  each shortened by up to 20 % of random jitter so that a fleet of nodes that
  lost the signer together does not come back in lockstep;
- while it fails, certificates already held keep serving until they expire
  (a third of their life is left when renewal starts, 8 h for 24 h certificates);
- ``/ready`` is 503 only when there is no valid node certificate (the inbound
  listener cannot complete a handshake); a renewal that keeps failing while
  the held certificates are valid is a warning line under ``LIVE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from nodeproxy.tls.store import IssuedCert


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with downward jitter; ``delay`` is pure math."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: float) -> float:
        """Seconds to wait after the ``failures``-th failure in a row; ``rand`` in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** max(failures - 1, 0))
        return base * (1.0 - self.jitter * rand)


@dataclass
class RenewalStatus:
    """The outcome of the last attempts, owned by the rotation task."""

    failures: int = 0  # consecutive failed attempts
    error: str | None = None  # the last failure's reason
    failing_since: datetime | None = None
    refused: dict[str, str] = field(default_factory=dict)  # identity -> the signer's reason

    def succeeded(self, refused: dict[str, str]) -> None:
        self.failures, self.error, self.failing_since = 0, None, None
        self.refused = refused

    def failed(self, error: str, now: datetime) -> None:
        self.failures += 1
        self.error = error
        if self.failing_since is None:
            self.failing_since = now

    def readiness(self, node_cert: IssuedCert | None, now: datetime) -> tuple[bool, str] | None:
        """None when all is well, else (still ready?, a one-line reason for ``/ready``)."""
        why = f": {self.error}" if self.error else ""
        if node_cert is None or now >= node_cert.not_after:
            what = "no node certificate yet" if node_cert is None else "node certificate expired"
            refused = self.refused.get(next(iter(self.refused), ""), "")
            return False, f"certificates: {what}{why or (': ' + refused if refused else '')}"
        if self.error is not None:
            assert self.failing_since is not None
            since = self.failing_since.strftime("%Y-%m-%dT%H:%M:%SZ")
            return True, (
                f"certificates: renewal failing since {since} ({self.failures} attempts){why}; "
                f"node certificate valid until {node_cert.not_after:%Y-%m-%dT%H:%M:%SZ}"
            )
        return None
