"""What one finished request leaves behind: its counters and its access line.

Kept apart from the connection loop because it is pure bookkeeping on the
hot path (one call per request, no await): label sets are cached per
(cluster, status), the access line goes through ``access_log.emit`` (batched
JSON, or a structlog event), and an upgraded connection also counts as a
tunnel with its bytes both ways.
"""

from __future__ import annotations

import trio

from nodeproxy import access_log
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.stats.names import (
    BYTES_RECEIVED,
    BYTES_SENT,
    REQUEST_DURATION,
    REQUESTS,
    TUNNEL_BYTES,
    UPGRADES,
)
from nodeproxy.stats.registry import Labels, Stats, labels
from nodeproxy.traffic.sources import Sources


class Accounting:
    """Stats and access lines of one listener; owned by its ``ConnectionLoop``."""

    def __init__(
        self, stats: Stats, listener: str, access_log_enabled: bool, sources: Sources | None = None
    ) -> None:
        self.stats = stats
        self.sources = sources if sources is not None else Sources()
        self.listener = listener
        self.access_log_enabled = access_log_enabled
        # (cluster, status) -> label sets: bounded by clusters x 3-digit statuses.
        self._labels: dict[tuple[str | None, int], tuple[Labels, Labels]] = {}
        self._listener_labels = labels(listener=listener)

    def __repr__(self) -> str:
        return f"<Accounting {self.listener} [{len(self._labels)} label sets]>"

    def _request_labels(self, cluster: str, status: int) -> tuple[Labels, Labels]:
        """(requests_total labels, duration labels) for a cluster and status."""
        code_class = f"{status // 100}xx" if status else "none"
        return (
            labels(listener=self.listener, cluster=cluster, code_class=code_class),
            labels(cluster=cluster),
        )

    def account(self, down: Downstream, ex: Exchange) -> float:
        """Stats and the access-log line for one finished request; returns the time it
        finished (the trio clock: the connection's next idle wait counts from it)."""
        stats = self.stats
        now = trio.current_time()
        duration = now - ex.started
        received = down.bytes_in - ex.bytes_received
        sent = down.bytes_out - ex.bytes_sent
        key = (ex.cluster, ex.status)
        lbls = self._labels.get(key)
        if lbls is None:
            lbls = self._labels[key] = self._request_labels(ex.cluster or "", ex.status)
        requests_lbls, duration_lbls = lbls
        stats.inc(REQUESTS, requests_lbls)
        stats.observe(REQUEST_DURATION, duration_lbls, duration)
        stats.inc(BYTES_RECEIVED, self._listener_labels, received)
        stats.inc(BYTES_SENT, self._listener_labels, sent)
        self.sources.answered(down.client_ip, ex.status, ex.cause, now)
        if self.access_log_enabled:
            access_log.emit(ex, duration, received, sent)
        if ex.upgrade is not None and ex.status == 101:
            self._account_tunnel(ex.upgrade, received, sent)
        return now

    def _account_tunnel(self, protocol: str, received: int, sent: int) -> None:
        """Counters of one upgraded connection (its access line is the request's)."""
        stats = self.stats
        stats.inc(UPGRADES, labels(listener=self.listener, protocol=protocol))
        up = labels(listener=self.listener, direction="upstream")
        stats.inc(TUNNEL_BYTES, up, received)
        stats.inc(TUNNEL_BYTES, labels(listener=self.listener, direction="downstream"), sent)
