"""The trio shell around the endpoint pools: connect, lend, take back, reap.

``Upstreams`` is created once per process by the app and handed to every
listener. It owns one ``EndpointPool`` per (cluster, endpoint) and is the only
code that opens or closes upstream sockets. Connect failures are mapped here,
once, to typed errors: refused/unreachable -> ``UpstreamConnectFailure``, no
answer within the cluster's ``connect_timeout`` -> ``UpstreamConnectTimeout``.

When an endpoint's pool is at capacity a request waits for a free slot, at
most the cluster's ``connect_timeout`` (the time it would have been willing to
spend connecting), then fails ``Overloaded`` (503). Waiting that long is
bounded and absorbs short bursts; failing at once would turn every burst over
``max_connections_per_endpoint`` into errors. The cluster's overload guard
(``traffic/state.py``) bounds the waiters (``max_pending_requests``) and the
sockets open to the whole cluster (``max_connections``): past either, 503
``overloaded`` at once.

A ``PeerEndpoint`` (a pod on another node, reached through that node's
inbound mTLS listener, ``peer.py``) is pooled by (peer node, identity) and
connected with TLS presenting the calling workload's certificate; the data
path above sees the same ``UpstreamConnection`` either way. A
``TunnelEndpoint`` is pooled by (peer, pod, identity) and, after the
handshake, sends ``CONNECT pod`` (nodeproxy/tunnel/): the connection is then
a plain HTTP/1.1 connection to that pod, which the peer only splices.

The reaper task also forgets pools whose endpoint left discovery more than
``endpoint_grace`` ago (``prune.py``): their idle connections are closed and
their metric series dropped, so pod churn does not grow them forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import trio

from nodeproxy.config.model import ClusterConfig
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.errors import (
    Overloaded,
    PeerTLSFailure,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
)
from nodeproxy.http1.codec import H11ClientCodec
from nodeproxy.resilience.overload import OverloadGuard, Resource
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import (
    POOL_CONNECTIONS,
    UPSTREAM_CONNECT_FAILURES,
    UPSTREAM_CONNECTIONS_CLOSED,
    UPSTREAM_CONNECTIONS_OPENED,
    UPSTREAM_REQUESTS,
)
from nodeproxy.stats.registry import Labels, Stats, labels
from nodeproxy.tls.stream import TLSStream
from nodeproxy.tunnel.client import handshake
from nodeproxy.tunnel.rawtls import RawTLS
from nodeproxy.upstream.connection import UpstreamConnection as UpstreamConnection
from nodeproxy.upstream.connection import stirred
from nodeproxy.upstream.endpoint_pool import EndpointPool, PoolFull
from nodeproxy.upstream.peer import PeerEndpoint, TunnelEndpoint, open_peer_stream
from nodeproxy.upstream.prune import Presence, Sweep

if TYPE_CHECKING:
    from nodeproxy.tls.node_certs import MeshCertificates

_MIN_REAP_INTERVAL = 0.05
_MAX_REAP_INTERVAL = 30.0
DEFAULT_ENDPOINT_GRACE = 60.0  # static config: its endpoints never leave anyway

_Key = tuple[str, str]  # (cluster name, endpoint address)


class Target:
    """Where one request goes: the balancer's pick and the route's deadline (read-only).

    A plain class, made once per request: mypyc compiles its ``__init__`` (a
    dataclass's is generated at import and runs interpreted).
    """

    __slots__ = ("cluster", "endpoint", "timeout")

    def __init__(self, cluster: ClusterConfig, endpoint: Endpoint, timeout: float) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.timeout = timeout  # response headers must arrive this long after the request is sent

    def __repr__(self) -> str:
        return f"Target({self.cluster.name!r}, {self.endpoint!r}, timeout={self.timeout!r})"


@dataclass
class _Entry:
    pool: EndpointPool[UpstreamConnection]
    cluster: str  # where the endpoint was found (pruning checks it is still there)
    address: str
    peer_node: str | None = None  # a mesh peer pool: present while its node has endpoints
    lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    waiting: int = 0  # tasks in or on their way out of ``lot`` (bool(lot) is an interpreted call)
    ep_labels: Labels = ()
    idle_labels: Labels = ()
    active_labels: Labels = ()
    code_labels: dict[int, Labels] = field(default_factory=dict)  # status class -> labels


class Upstreams:
    """All upstream connection pools of the process."""

    def __init__(self, runtime: Runtime, certs: MeshCertificates | None = None) -> None:
        self._certs = certs  # this node's workload certificates (mesh only)
        self._runtime = runtime
        self._traffic = runtime.traffic  # bound once: the property is an interpreted call
        self._stats: Stats = runtime.stats
        self._clusters = runtime.config.clusters
        self._max_header_bytes = runtime.config.limits.max_request_header_bytes
        self._entries: dict[_Key, _Entry] = {}
        self._stats.add_collector(self._publish_all)
        k8s = runtime.config.discovery.kubernetes
        self._sweep: Sweep[_Key] = Sweep(
            k8s.endpoint_grace if k8s is not None else DEFAULT_ENDPOINT_GRACE
        )

    def __repr__(self) -> str:
        active = sum(e.pool.active for e in self._entries.values())
        idle = sum(e.pool.idle for e in self._entries.values())
        return f"<Upstreams [{len(self._entries)} endpoints | {active} active, {idle} idle]>"

    def _entry(self, cluster: ClusterConfig, endpoint: Endpoint) -> _Entry:
        if isinstance(endpoint, PeerEndpoint):
            key = endpoint.pool_key
        else:
            key = (cluster.name, endpoint.address)
        entry = self._entries.get(key)
        if entry is None:
            lbls = {"cluster": key[0], "endpoint": key[1]}
            entry = self._entries[key] = _Entry(
                pool=EndpointPool(cluster.max_connections_per_endpoint, cluster.idle_timeout),
                cluster=cluster.name,
                address=endpoint.address,
                peer_node=endpoint.node if isinstance(endpoint, PeerEndpoint) else None,
                ep_labels=labels(**lbls),
                idle_labels=labels(**lbls, state="idle"),
                active_labels=labels(**lbls, state="active"),
            )
        return entry

    def _publish_all(self, stats: Stats) -> None:
        """The pool sizes, for a reader of the gauges (``Stats.collect``)."""
        for entry in self._entries.values():
            stats.gauge_set(POOL_CONNECTIONS, entry.idle_labels, entry.pool.idle)
            stats.gauge_set(POOL_CONNECTIONS, entry.active_labels, entry.pool.active)

    def _guard(self, cluster: ClusterConfig) -> OverloadGuard | None:
        """The cluster's overload guard, if the data path admitted a request to it."""
        state = self._traffic.get(cluster.name)
        return state.overload if state is not None and state.config is cluster else None

    async def acquire(
        self, cluster: ClusterConfig, endpoint: Endpoint, *, fresh: bool = False
    ) -> UpstreamConnection:
        """A connection to ``endpoint``: an idle one if any (unless ``fresh``), else a new one.

        Overload thresholds of the cluster: waiting for a slot counts as
        ``max_pending_requests``, each open socket as ``max_connections``
        (until ``UpstreamConnection.close``); over either -> ``Overloaded``.
        """
        entry = self._entry(cluster, endpoint)
        pool = entry.pool
        guard = self._guard(cluster)
        try:
            conn, expired = pool.checkout(trio.current_time())
        except PoolFull:
            conn, expired = await self._wait_for_slot(entry, cluster.connect_timeout, guard)
        self._close(entry, expired)
        if conn is not None and (fresh or stirred(conn)):
            self._close(entry, (conn,))
            conn = None  # keep the slot, open a new socket in it
        if conn is not None:
            conn.reused = True
            return conn
        admitted = None  # the guard whose CONNECTIONS slot this attempt holds
        try:
            if guard is not None:
                guard.admit(Resource.CONNECTIONS)
                admitted = guard
            new = await self._connect(cluster, endpoint, entry)
        except BaseException:
            if admitted is not None:
                admitted.release(Resource.CONNECTIONS)
            pool.discard()
            entry.lot.unpark()
            raise
        new.guard = guard
        return new

    async def _wait_for_slot(
        self, entry: _Entry, timeout: float, guard: OverloadGuard | None
    ) -> tuple[UpstreamConnection | None, list[UpstreamConnection]]:
        if guard is not None:
            guard.admit(Resource.PENDING)  # Overloaded at once past max_pending_requests
        try:
            with trio.move_on_after(timeout):
                while True:
                    entry.waiting += 1
                    try:
                        await entry.lot.park()
                    finally:
                        entry.waiting -= 1
                    try:
                        return entry.pool.checkout(trio.current_time())
                    except PoolFull:
                        continue
            raise Overloaded(f"connection pool full: {entry.pool!r}")
        finally:
            if guard is not None:
                guard.release(Resource.PENDING)

    async def _connect(
        self, cluster: ClusterConfig, endpoint: Endpoint, entry: _Entry
    ) -> UpstreamConnection:
        stream: trio.SocketStream | None = None
        try:
            with trio.move_on_after(cluster.connect_timeout):
                stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except OSError as exc:
            self._stats.inc(UPSTREAM_CONNECT_FAILURES, entry.ep_labels)
            raise UpstreamConnectFailure(f"{endpoint.address}: {exc}") from exc
        if stream is None:
            self._stats.inc(UPSTREAM_CONNECT_FAILURES, entry.ep_labels)
            raise UpstreamConnectTimeout(
                f"{endpoint.address}: no answer in {cluster.connect_timeout}s"
            )
        key = (cluster.name, endpoint.address)
        if isinstance(endpoint, PeerEndpoint):
            key = endpoint.pool_key
            ctx = None
            if self._certs is not None and endpoint.identity is not None:
                ctx = self._certs.client_context(endpoint.identity)
            if ctx is None:
                await trio.aclose_forcefully(stream)
                raise PeerTLSFailure(f"this node holds no certificate for {endpoint.identity}")
            raw = None
            try:
                tls = await open_peer_stream(
                    stream, ctx, endpoint, cluster.connect_timeout, self._stats
                )
                if isinstance(endpoint, TunnelEndpoint):  # CONNECT: the peer then only splices
                    await open_http_tunnel(tls, endpoint, cluster.connect_timeout)
                    raw = RawTLS.adopt(tls)  # moves bytes cheaper than trio's SSLStream
            except BaseException:
                self._stats.inc(UPSTREAM_CONNECT_FAILURES, entry.ep_labels)
                raise
            # TLSStream and RawTLS have SocketStream's surface (socket, send_all,
            # receive_some, send_eof).
            stream = cast(trio.SocketStream, tls if raw is None else raw)
        self._stats.inc(UPSTREAM_CONNECTIONS_OPENED, entry.ep_labels)
        return UpstreamConnection(stream, H11ClientCodec(self._max_header_bytes), key)

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Give a connection back: kept for reuse when ``reusable``, else closed."""
        entry = self._entries[conn.pool_key]
        if reusable:
            conn.codec.start_next_cycle()
            entry.pool.checkin(conn, trio.current_time())
        else:
            self._close(entry, (conn,))
            entry.pool.discard()
        if entry.waiting:  # nobody waits, nearly always: skip the call on the hot path
            entry.lot.unpark()

    def record_response(self, conn: UpstreamConnection, status: int) -> None:
        """Count one upstream answer by endpoint and status class."""
        entry = self._entries[conn.pool_key]
        lbls = entry.code_labels.get(status // 100)
        if lbls is None:
            cluster, endpoint = conn.pool_key
            lbls = entry.code_labels[status // 100] = labels(
                cluster=cluster, endpoint=endpoint, code_class=f"{status // 100}xx"
            )
        self._stats.inc(UPSTREAM_REQUESTS, lbls)

    def reap(self, now: float) -> int:
        """Close idle connections past their cluster's idle timeout; returns how many."""
        closed = 0
        for entry in self._entries.values():
            expired = entry.pool.expire(now)
            if expired:
                self._close(entry, expired)
                closed += len(expired)
        return closed

    def prune(self, now: float) -> int:
        """Forget the pools of endpoints gone from discovery for ``endpoint_grace``
        (none lent out): close their idle connections, drop their metric series."""
        present = Presence(self._runtime.endpoints.current())
        states = (
            (
                key,
                present.has_node(e.peer_node)
                if e.peer_node is not None
                else present.has(e.cluster, e.address),
                e.pool.active > 0 or bool(e.lot),
            )
            for key, e in self._entries.items()
        )
        gone = set(self._sweep.due(now, states))
        for key in gone:
            for conn in self._entries.pop(key).pool.take_all_idle():
                conn.close()
        if gone:
            self._stats.drop_series(lambda lbls: _pool_key(lbls) in gone)
        return len(gone)

    async def run(self) -> None:
        """The reaper task: runs until cancelled."""
        timeouts = [c.idle_timeout for c in self._clusters.values()] or [_MAX_REAP_INTERVAL]
        interval = min(max(min(timeouts) / 2, _MIN_REAP_INTERVAL), _MAX_REAP_INTERVAL)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            self.reap(now)
            self.prune(now)

    async def aclose(self) -> None:
        """Shutdown: close idle connections (lent ones close with their request)."""
        self.close_idle()
        await trio.lowlevel.checkpoint()

    def close_idle(self) -> int:
        """Close every idle connection now (drain, shutdown); returns how many."""
        closed = 0
        for entry in self._entries.values():
            idle = entry.pool.take_all_idle()
            self._close(entry, idle)
            closed += len(idle)
        return closed

    def _close(self, entry: _Entry, conns: Sequence[UpstreamConnection]) -> None:
        """Close connections of ``entry``'s pool and count them."""
        for conn in conns:
            conn.close()
        if conns:
            self._stats.inc(UPSTREAM_CONNECTIONS_CLOSED, entry.ep_labels, len(conns))


async def open_http_tunnel(tls: TLSStream, endpoint: TunnelEndpoint, timeout: float) -> None:
    """CONNECT to the pod over a handshaken peer stream; it then carries one HTTP/1.1
    connection. An HTTP server does not speak first: bytes before our request are an error."""
    try:
        first = await handshake(tls, endpoint.destination, endpoint.service, timeout, http=True)
        if first:
            raise UpstreamProtocolError(f"{endpoint.destination} sent bytes before any request")
    except BaseException:
        await trio.aclose_forcefully(tls.tls.transport_stream)
        raise


def _pool_key(lbls: Labels) -> tuple[str, str] | None:
    """The (cluster, endpoint) a series is labelled with, if both are there."""
    found = dict(lbls)
    cluster, endpoint = found.get("cluster"), found.get("endpoint")
    return (cluster, endpoint) if cluster is not None and endpoint is not None else None
