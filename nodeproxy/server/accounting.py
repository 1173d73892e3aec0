"""What one finished request leaves behind: its counters and its access line.

Kept apart from the connection loop because it is pure bookkeeping on the
hot path (one call per request, no await): label sets are built once per
(route, cluster, status) and then looked up, the access line goes through
``access_log.emit`` (batched JSON, or a structlog event), and an upgraded
connection also counts as a tunnel with its bytes both ways. A request from a
known caller (the inbound listener's mTLS peer, or the source pod a mesh's
outbound listener identified) also counts under the caller's namespace and
service account, capped at ``SOURCE_CAP`` callers.
"""

from __future__ import annotations

import trio

from nodeproxy import access_log
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.stats.names import (
    BYTES_RECEIVED,
    BYTES_SENT,
    CALLER_REQUESTS,
    REQUEST_DURATION_MS,
    REQUESTS,
    SOURCE_CAP,
    TUNNEL_BYTES,
    UPGRADES,
)
from nodeproxy.stats.registry import OTHER, Bounded, Labels, Stats, labels
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.traffic.sources import Sources


def code_labels(status: int) -> tuple[str, str]:
    """(response_code, code_class): ``("503", "5xx")``; ``none`` when no answer was sent,
    ``other`` outside 100..599 (bounds the label)."""
    if not status:
        return "none", "none"
    if not 100 <= status <= 599:
        return OTHER, OTHER
    return str(status), f"{status // 100}xx"


class Accounting:
    """Stats and access lines of one listener; owned by its ``ConnectionLoop``."""

    def __init__(
        self, stats: Stats, listener: str, access_log_enabled: bool, sources: Sources | None = None
    ) -> None:
        self.stats = stats
        self.sources = sources if sources is not None else Sources()
        self.listener = listener
        self.access_log_enabled = access_log_enabled
        # (route, cluster, status) -> label sets: bounded by the config's routes and
        # clusters x 3-digit statuses.
        self._labels: dict[tuple[str, str | None, int], tuple[Labels, Labels]] = {}
        self._listener_labels = labels(listener=listener)
        self._callers = Bounded(SOURCE_CAP)
        # (caller, cluster, status class) -> labels, bounded through ``_callers``
        self._caller_labels: dict[tuple[SpiffeId | None, str | None, int], Labels] = {}

    def __repr__(self) -> str:
        return f"<Accounting {self.listener} [{len(self._labels)} label sets]>"

    def _request_labels(self, route: str, cluster: str, status: int) -> tuple[Labels, Labels]:
        """(requests_total labels, duration labels) for a route, cluster and status."""
        code, code_class = code_labels(status)
        return (
            labels(
                listener=self.listener,
                route=route,
                cluster=cluster,
                response_code=code,
                code_class=code_class,
            ),
            labels(route=route, cluster=cluster),
        )

    def account(self, down: Downstream, ex: Exchange) -> float:
        """Stats and the access-log line for one finished request; returns the time it
        finished (the trio clock: the connection's next idle wait counts from it)."""
        stats = self.stats
        now = ex.finished or trio.current_time()  # the pipeline's end, when it set one
        duration = now - ex.started
        received = down.bytes_in - ex.bytes_received
        sent = down.bytes_out - ex.bytes_sent
        key = (ex.route, ex.cluster, ex.status)
        lbls = self._labels.get(key)
        if lbls is None:
            lbls = self._labels[key] = self._request_labels(ex.route, ex.cluster or "", ex.status)
        requests_lbls, duration_lbls = lbls
        stats.inc(REQUESTS, requests_lbls)
        stats.observe(REQUEST_DURATION_MS, duration_lbls, duration * 1000.0)
        stats.inc(BYTES_RECEIVED, self._listener_labels, received)
        stats.inc(BYTES_SENT, self._listener_labels, sent)
        self.sources.answered(down.client_ip, ex.status, ex.cause, now)
        if ex.caller is not None:
            self._account_caller(ex.caller, ex)
        if self.access_log_enabled:
            access_log.emit(ex, duration, received, sent)
        if ex.upgrade is not None and ex.status == 101:
            self._account_tunnel(ex.upgrade, received, sent)
        return now

    def _account_caller(self, caller: SpiffeId, ex: Exchange) -> None:
        key: tuple[SpiffeId | None, str | None, int] = (caller, ex.cluster, ex.status // 100)
        lbls = self._caller_labels.get(key)
        if lbls is None:
            if self._callers(str(caller)) == OTHER:  # past the cap: one shared series
                namespace = account = OTHER
                key = (None, ex.cluster, ex.status // 100)
            else:
                namespace, account = caller.namespace or "", caller.service_account or ""
            lbls = self._caller_labels.get(key)
            if lbls is None:
                lbls = self._caller_labels[key] = labels(
                    listener=self.listener,
                    cluster=ex.cluster or "",
                    caller_namespace=namespace,
                    caller_service_account=account,
                    code_class=code_labels(ex.status)[1],
                )
        self.stats.inc(CALLER_REQUESTS, lbls)

    def _account_tunnel(self, protocol: str, received: int, sent: int) -> None:
        """Counters of one upgraded connection (its access line is the request's)."""
        stats = self.stats
        stats.inc(UPGRADES, labels(listener=self.listener, protocol=protocol))
        up = labels(listener=self.listener, direction="upstream")
        stats.inc(TUNNEL_BYTES, up, received)
        stats.inc(TUNNEL_BYTES, labels(listener=self.listener, direction="downstream"), sent)
