"""The request path of one listener, read top-down.

    request head  (server/connection.py parsed it with http1/codec.py)
      -> where    http1/headers.py     authority from the absolute-form URI or Host
      -> route    routing/router.py    authority + path + headers -> cluster and
                                       canary subset (label selector); a route
                                       that answers itself (direct_response,
                                       redirect: routing/actions.py) stops here,
                                       and so does a CORS preflight the route's
                                       policy allows (routing/cors.py)
      -> admit    traffic/state.py     the service's circuit breaker (503
                                       circuit_open) and overload guard (503
                                       overloaded), before any byte goes out
      -> balance  balancing/           the cluster's balancer (p2c_ewma by
                                       default) over the subset's endpoints the
                                       outlier detector has not ejected
      -> mesh     mesh/outbound.py     a pod of this node: policy, then direct;
                                       of another node: mTLS to its inbound port
                                       as the calling workload (upstream/peer.py)
      -> upstream upstream/pool.py     a pooled keep-alive connection to it
      -> send     server/exchange.py   the request up (the route's rewrites and
                                       header edits applied), until the response head
      -> report   traffic/attempt.py   the head's status, or the error, feeds the
                                       balancer, the outlier detector and breaker
      -> relay    server/exchange.py   the response down

Routes with ``retries`` go through ``server/retrying.py`` instead of the
straight send/relay: it calls back ``pick`` for every try (which prefers
endpoints this request has not tried yet) and reports each try's own outcome.

Every step before ``send`` is synchronous and raises a typed ``ProxyError``
(404 unknown service / no route, 503 no healthy upstream...) that the
connection loop turns into the answer. The decision state (balancers,
detectors, breakers) is per process, ``runtime.traffic``, shared by every
listener, and so is route-level state (a route's rate-limit buckets and retry
budget, ``runtime.routes``); a ``Pipeline`` holds only its listener's router
and listener-level admission. Headers only a node proxy may set
(``x-nodeproxy-*``) are stripped from every request first: a plaintext client
never names the next hop. The inbound (mTLS) side is
``mesh/inbound.py``'s ``InboundHandler``.
"""

from __future__ import annotations

from collections.abc import Collection

import trio

from nodeproxy.config.model import ClusterConfig, EndpointConfig, ListenerConfig
from nodeproxy.errors import (
    NoHealthyUpstream,
    NotSynced,
    UnknownService,
    UpstreamResponseTimeout,
)
from nodeproxy.http1.codec import request_event
from nodeproxy.http1.forwarding import Forwarding, forwarded_client
from nodeproxy.http1.headers import request_authority
from nodeproxy.http1.impl import h11
from nodeproxy.mesh.outbound import mesh_step, strip_mesh_headers
from nodeproxy.routing import cors
from nodeproxy.routing.actions import RouteActions, auto_host
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.header_edits import client_source, replace_host
from nodeproxy.routing.router import RouteDecision, Router
from nodeproxy.runtime import Runtime
from nodeproxy.server.admission import Admission
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.exchange import prepare, relay, send
from nodeproxy.server.relay import answer_local
from nodeproxy.server.retrying import Retrier
from nodeproxy.traffic.attempt import Attempt, Ticket
from nodeproxy.traffic.state import ClusterTraffic
from nodeproxy.upstream.pool import Target, Upstreams


class Pipeline:
    """route -> admit -> balance -> upstream -> send -> report -> relay, for one listener:
    the outbound listeners' ``Handler`` (``server/handler.py``)."""

    accepts_connect = False  # a CONNECT is refused by the codec before routing

    def __init__(
        self,
        runtime: Runtime,
        listener: ListenerConfig,
        upstreams: Upstreams,
    ) -> None:
        config = runtime.config
        self.runtime = runtime
        self.upstreams = upstreams
        self.router = Router(
            listener, config.default_namespace, config.cluster_domain, rng=runtime.rng
        )
        self._upgrades = listener.upgrades  # a route's own ``upgrades`` wins
        self.forwarding = Forwarding.of(listener)  # X-Forwarded-*, Via (Envoy's rules)
        self._reads_xff = self.forwarding.reads_xff
        self._strip_port = listener.strip_port_upstream and listener.host_port_match != "exact"
        self.traffic = runtime.traffic
        self.retrier = Retrier(runtime.stats)
        # the listener's rate limits and fairness; route buckets are runtime.routes'
        self.admission = Admission(
            listener, config.fairness, runtime.stats, runtime.routes, runtime.sources
        )
        self._body_timeout = config.limits.downstream_idle_timeout
        # auto_host_rewrite toward an IP endpoint: ip:port natively, nothing as Envoy.
        self._auto_host_ip = config.source_format == "native"

    def __repr__(self) -> str:
        return f"<Pipeline {self.router!r} [{self.traffic!r}]>"

    def bound(self, port: int) -> None:
        """The listener's bound port (its config may say 0): host_port_match compares it."""
        self.router.bound(port)

    async def handle(self, down: Downstream, request: h11.Request, ex: Exchange) -> bool:
        """Proxy one request; True when the client connection may be kept alive."""
        host, path = request_authority(request.target, request.headers)
        ex.authority, ex.path = host.decode("latin-1"), path.decode("latin-1")
        request = strip_mesh_headers(request)
        routed = down.route_authority or ex.authority  # intercepted: the original destination
        decision = self.route(routed, ex.path, request.headers)
        ex.route = decision.rule.name or decision.virtual_host.name
        ex.via = self.forwarding.via
        if self._reads_xff:
            ex.client = forwarded_client(request.headers, down.client_ip, self.forwarding)
        if self._strip_port:
            host = self.router.upstream_host(host)
        if decision.rule.cors is not None:  # routing/cors.py: preflight answered here
            verdict, origin = cors.classify(decision.rule.cors, request.method, request.headers)
            if verdict is cors.Verdict.ACTUAL:
                ex.cors = cors.response_headers(decision.rule.cors, origin)
            elif verdict is not cors.Verdict.NONE:
                return await self.answer_preflight(down, request, ex, decision, verdict, origin)
        actions = decision.actions
        if actions is not None and actions.local:
            return await self.answer(down, request, ex, decision, actions)
        ex.cluster = decision.cluster
        self.admission.check_route(decision.rule, down.client_ip)  # 429 before any state
        cluster = self.cluster_of(decision)
        now = trio.current_time()
        state = self.traffic.cluster(cluster, now)
        ticket = state.admit(now)
        attempts: list[Attempt] = []
        try:
            rule_upgrades = decision.rule.upgrades
            upgrades = self._upgrades if rule_upgrades is None else rule_upgrades
            out = prepare(
                down,
                request,
                ex,
                host=host,
                path=path,
                upgrades=upgrades,
                actions=actions,
                forwarding=self.forwarding,
            )
            head = out.in_hand[0]
            assert type(head) is h11.Request
            if decision.rule.retries is not None:
                route = self.runtime.routes.state(decision.rule, trio.current_time())

                def pick(upstream_head: h11.Request) -> tuple[Target, h11.Request, Attempt]:
                    """One try's endpoint, preferring those this request has not tried."""
                    tried = {a.endpoint.address for a in attempts}
                    now = trio.current_time()
                    return self.pick(
                        down, upstream_head, ex, ticket, decision, cluster, attempts, now, tried
                    )

                return await self.retrier.forward(
                    down,
                    out,
                    ex,
                    route,
                    pick,
                    self.upstreams,
                    body_timeout=self._body_timeout,
                    drain=self.runtime.drain,
                    overload=state.overload,
                )
            target, out.in_hand[0], attempt = self.pick(
                down, head, ex, ticket, decision, cluster, attempts, now
            )
            conn, first = await send(self.upstreams, target, down, out, self._body_timeout)
            attempt.report_status(first.status_code, trio.current_time())
            return await relay(
                down, conn, first, ex, self.upstreams, out.upgrade, self.runtime.drain
            )
        except BaseException as exc:
            if attempts:  # the last try's error is the request's (no-op once it reported)
                attempts[-1].report_error(_timeout_or(down, exc), trio.current_time())
            raise
        finally:
            now = ex.finished = trio.current_time()  # relayed (or failed); the access line's end
            for attempt in attempts:
                attempt.close(now)
            ticket.close(now)

    def pick(
        self,
        down: Downstream,
        upstream_head: h11.Request,
        ex: Exchange,
        ticket: Ticket,
        decision: RouteDecision,
        cluster: ClusterConfig,
        attempts: list[Attempt],
        now: float,
        tried: Collection[str] = (),
    ) -> tuple[Target, h11.Request, Attempt]:
        """One try: balance (avoiding ``tried`` addresses while others are left), count
        the try in ``attempts``, then the mesh hop."""
        attempt = self.start(ticket.state, ticket, decision, cluster, now, tried, down.pin)
        attempts.append(attempt)  # before the mesh step, which may refuse: closed either way
        ex.upstream = attempt.endpoint.address
        target = Target(cluster, attempt.endpoint, self.timeout_of(decision, cluster))
        if decision.actions is not None and decision.actions.auto_host:
            upstream_head = self._auto_host(upstream_head, attempt.endpoint)
        mesh = self.runtime.mesh
        if mesh is None:
            return target, upstream_head, attempt
        target, upstream_head = mesh_step(mesh, down.client_ip, upstream_head, ex, target)
        return target, upstream_head, attempt

    async def answer(
        self,
        down: Downstream,
        request: h11.Request,
        ex: Exchange,
        decision: RouteDecision,
        actions: RouteActions,
    ) -> bool:
        """A route's direct response or redirect: no cluster, no upstream (cluster "-")."""
        self.admission.check_route(decision.rule, down.client_ip)  # 429 first, as any route
        status, headers, body = actions.local_response(
            scheme=self._scheme(request.headers),
            authority=ex.authority,
            target=ex.path,
            source=client_source(ex.source, ex.client),
        )
        if ex.cors is not None:
            headers = cors.apply(headers, ex.cors)
        return await answer_local(
            down, ex, status, headers, body, drain=self.runtime.drain.draining
        )

    async def answer_preflight(
        self,
        down: Downstream,
        request: h11.Request,
        ex: Exchange,
        decision: RouteDecision,
        verdict: cors.Verdict,
        origin: bytes,
    ) -> bool:
        """A CORS preflight for an allowed origin (200), or one refused (403): no upstream."""
        assert decision.rule.cors is not None
        self.admission.check_route(decision.rule, down.client_ip)  # 429 first, as any route
        if verdict is cors.Verdict.PREFLIGHT:
            status = 200
            headers = cors.preflight_headers(decision.rule.cors, origin, request.headers)
        else:
            status, headers = 403, [(b"content-length", b"0")]
        return await answer_local(down, ex, status, headers, b"", drain=self.runtime.drain.draining)

    def _scheme(self, headers: h11._headers.Headers) -> str:
        """The request's scheme for a redirect: an incoming ``x-forwarded-proto`` when the
        listener keeps it (``http1/forwarding.py``), else the connection's."""
        if self.forwarding.keep_proto:
            for name, value in headers:
                if name == b"x-forwarded-proto" and value.lower() in (b"http", b"https"):
                    return value.lower().decode()
        return self.forwarding.scheme.decode()

    def _auto_host(self, head: h11.Request, endpoint: EndpointConfig) -> h11.Request:
        """``head`` with the Host ``auto_host_rewrite`` gives ``endpoint``."""
        host = auto_host(endpoint.host, endpoint.port, ip_endpoints=self._auto_host_ip)
        if host is None:
            return head
        return request_event(head.method, head.target, replace_host(head.headers, host))

    def route(self, authority: str, path: str, headers: h11._headers.Headers) -> RouteDecision:
        """Which cluster (and canary subset) serves this request (UnknownService / NoRoute)."""
        return self.router.route(parse_authority(authority), authority.lower(), path, headers)

    def cluster_of(self, decision: RouteDecision) -> ClusterConfig:
        """The routed cluster's settings; a discovered service that does not exist is a 404
        (a 503 before discovery has synced: it may exist)."""
        cluster = self.runtime.config.clusters.get(decision.cluster)
        if cluster is not None:
            return cluster
        if decision.rule.cluster_from_authority:
            if not self.runtime.endpoints.synced:
                raise NotSynced(f"service {decision.cluster!r}: discovery not synced yet")
            raise UnknownService(f"no service {decision.cluster!r} discovered")
        raise NoHealthyUpstream(f"cluster {decision.cluster!r} is not configured")

    def start(
        self,
        state: ClusterTraffic,
        ticket: Ticket,
        decision: RouteDecision,
        cluster: ClusterConfig,
        now: float,
        tried: Collection[str] = (),
        only: str | None = None,
    ) -> Attempt:
        """Pick from the current snapshot and count the try (NoHealthyUpstream when none);
        ``only``: that endpoint's address or nothing (a pod an intercepted client dialled)."""
        endpoints = self.runtime.endpoints.snapshot.clusters.get(cluster.name, ())
        if only is not None:
            endpoints = tuple(e for e in endpoints if e.address == only)
        return state.start(ticket, endpoints, decision.subset, now, tried)

    @staticmethod
    def timeout_of(decision: RouteDecision, cluster: ClusterConfig) -> float:
        return decision.rule.timeout or cluster.response_timeout


def _timeout_or(down: Downstream, exc: BaseException) -> BaseException:
    """The connection's response deadline firing is a timeout of the try, not a cancel."""
    scope = down.scope
    if (
        isinstance(exc, trio.Cancelled)
        and down.response_timeout is not None
        and scope is not None
        and scope.cancel_called
    ):
        return UpstreamResponseTimeout(f"no response headers in {down.response_timeout}s")
    return exc
