"""Active HTTP health checks, the trio shell: probe, then tell ``HealthTracker``.

Why one task for every cluster instead of one per cluster: clusters come and
go with discovery (``config.clusters`` may be a live catalog), and a single
loop that re-reads the catalog on each wake-up needs no start/stop
bookkeeping. It asks each configured cluster's tracker (``resilience/health.py``,
owned by ``runtime.traffic``) which endpoints are ``due``, probes those in a
nursery of its own, and sleeps until the next one is due (at most
``_MAX_SLEEP``, so a new cluster or endpoint is noticed).

A probe is one plain ``GET <path>`` over a fresh connection (``connection:
close``), bounded by the check's ``timeout`` for connect + response head;
2xx and 3xx pass (Kubernetes' httpGet probe rule; with a ``service_name``, the
answer must also name that cluster: ``resilience/health.py`` ``passes``),
anything else, a refused connection or a timeout fails. At most one probe per endpoint is in flight,
so the number of probe tasks is bounded by the number of endpoints.

Each probe counts in ``nodeproxy_health_checks_total{cluster, result}``
(``success``, ``failure``: answered but failing the check, ``network_failure``:
refused, reset or closed, ``timeout``), and each cluster's count of failing
endpoints is ``nodeproxy_health_check_unhealthy_endpoints`` (set where the
checks run: the process, or a supervisor for its workers).
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import structlog
import trio

from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.resilience.health import HealthCheckConfig, HealthTracker, passes
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import HEALTH_CHECK_UNHEALTHY, HEALTH_CHECKS
from nodeproxy.stats.registry import labels
from nodeproxy.traffic.state import ClusterTraffic

log = structlog.get_logger("nodeproxy.health")

_MAX_SLEEP = 1.0  # wake at least this often to notice new clusters and endpoints
_MAX_HEAD = 16384  # bytes of response head read from a probe before giving up
_CHUNK = 4096
_ANY = HealthCheckConfig()

SUCCESS, FAILURE, NETWORK_FAILURE, TIMEOUT = "success", "failure", "network_failure", "timeout"


async def probe(
    endpoint: Endpoint, path: str, timeout: float, check: HealthCheckConfig | None = None
) -> bool:
    """One ``GET path`` against ``endpoint``: True for a head within ``timeout`` that
    ``check`` passes (default: any 2xx/3xx)."""
    return await probe_result(endpoint, path, timeout, check) == SUCCESS


async def probe_result(
    endpoint: Endpoint, path: str, timeout: float, check: HealthCheckConfig | None = None
) -> str:
    """One ``GET path`` against ``endpoint``: ``SUCCESS`` for a head within ``timeout``
    that ``check`` passes (default: any 2xx/3xx), ``FAILURE`` for one it fails,
    ``NETWORK_FAILURE`` when the connection failed, else ``TIMEOUT``."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except OSError:
            return NETWORK_FAILURE
        async with stream:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
            request = h11.Request(
                method="GET",
                target=path,
                headers=[
                    ("host", endpoint.address),
                    ("user-agent", "nodeproxy-health-check"),
                    ("connection", "close"),
                ],
            )
            try:
                await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(_CHUNK))
                    elif type(event) is h11.Response:
                        ok = passes(check or _ANY, event.status_code, event.headers)
                        return SUCCESS if ok else FAILURE
                    elif type(event) is h11.ConnectionClosed:
                        return NETWORK_FAILURE
            except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                return NETWORK_FAILURE
    return TIMEOUT


class HealthChecker:
    """The probing loop of the process; owns only the set of probes in flight."""

    def __init__(self, runtime: Runtime, on_change: Callable[[], None] | None = None) -> None:
        self.runtime = runtime
        self.on_change = on_change  # a supervisor's: push the new verdicts to its workers
        self._in_flight: set[tuple[str, str]] = set()  # (cluster, endpoint address)
        self.probes = 0

    def __repr__(self) -> str:
        return f"<HealthChecker [{len(self._in_flight)} in flight | {self.probes} probes]>"

    async def run(self) -> None:
        """Probe due endpoints until cancelled (started in the app's root nursery)."""
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                wake = now + _MAX_SLEEP
                checked: set[str] = set()
                for cluster in list(self.runtime.config.clusters.values()):
                    if cluster.health_check is None:
                        continue
                    state = self.runtime.traffic.cluster(cluster, now)
                    tracker = state.health
                    if tracker is None:
                        continue
                    endpoints = self.runtime.endpoints.current().endpoints(cluster.name)
                    due_now = tracker.due(endpoints, now)  # forgets departed endpoints
                    checked.add(cluster.name)
                    self._publish(cluster.name, tracker)
                    for ep in due_now:
                        key = (cluster.name, ep.address)
                        if key not in self._in_flight:
                            self._in_flight.add(key)
                            nursery.start_soon(self._probe_one, state, ep, key)
                    due = tracker.next_due()
                    if due is not None:
                        wake = min(wake, due)
                self._forget(checked)
                await trio.sleep_until(max(wake, now))

    def _publish(self, cluster: str, tracker: HealthTracker) -> None:
        """The cluster's count of failing endpoints (after each probe and each wake-up)."""
        unhealthy = float(len(tracker.unhealthy()))
        self.runtime.stats.gauge_set(HEALTH_CHECK_UNHEALTHY, labels(cluster=cluster), unhealthy)

    def _forget(self, checked: set[str]) -> None:
        """Drop the gauge of clusters no longer checked (gone from the config or discovery)."""
        series = self.runtime.stats.gauges.get(HEALTH_CHECK_UNHEALTHY, {})
        for lbls in [lbls for lbls in series if dict(lbls).get("cluster") not in checked]:
            del series[lbls]

    async def _probe_one(self, state: ClusterTraffic, ep: Endpoint, key: tuple[str, str]) -> None:
        tracker = state.health
        assert tracker is not None
        try:
            result = await probe_result(
                ep, tracker.config.path, tracker.config.timeout, tracker.config
            )
        finally:
            self._in_flight.discard(key)
        self.probes += 1
        self.runtime.stats.inc(HEALTH_CHECKS, labels(cluster=state.name, result=result))
        changed = tracker.record(ep, result == SUCCESS, trio.current_time())
        self._publish(state.name, tracker)
        if changed is not None:
            if self.on_change is not None:
                self.on_change()
            log.info(
                "health_check_state",
                cluster=state.name,
                endpoint=ep.address,
                state=changed.value,
            )
