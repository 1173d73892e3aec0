"""The request path of one listener, read top-down.

    request head  (server/connection.py parsed it with http1/codec.py)
      -> where    http1/headers.py     authority from the absolute-form URI or Host
      -> route    routing/router.py    authority + path + headers -> cluster
      -> balance  balancing/           one RoundRobin per cluster, over the
                                       current endpoint snapshot (discovery/)
      -> mesh     mesh/outbound.py     a pod of this node: policy, then direct;
                                       of another node: mTLS to its inbound port
                                       as the calling workload (upstream/peer.py)
      -> upstream upstream/client.py   a pooled keep-alive connection to it
      -> forward  server/exchange.py   stream the request up, the response down

Every step before ``forward`` is synchronous and raises a typed ``ProxyError``
(404 unknown service / no route, 503 no healthy upstream...) that the
connection loop turns into the answer. One ``Pipeline`` per listener; its
balancers are the only state, owned by it. Headers only a node proxy may set
(``x-nodeproxy-*``) are stripped from every request first: a plaintext client
never names the next hop. The inbound (mTLS) side is ``mesh/inbound.py``.
"""

from __future__ import annotations

import h11
import trio

from nodeproxy.balancing.base import Balancer
from nodeproxy.balancing.round_robin import RoundRobin
from nodeproxy.config.model import ListenerConfig
from nodeproxy.errors import NoHealthyUpstream
from nodeproxy.http1.headers import request_authority
from nodeproxy.mesh.outbound import mesh_step, strip_mesh_headers
from nodeproxy.mesh.state import Mesh, forget_rule
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.router import RouteDecision, Router
from nodeproxy.runtime import Runtime
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.exchange import forward
from nodeproxy.upstream.pool import Target, Upstreams


class Pipeline:
    """route -> balance -> upstream -> forward, for the requests of one listener."""

    def __init__(
        self,
        runtime: Runtime,
        listener: ListenerConfig,
        upstreams: Upstreams,
        mesh: Mesh | None = None,
    ) -> None:
        config = runtime.config
        self.runtime = runtime
        self.outbound_mesh = mesh
        self.upstreams = upstreams
        self.router = Router(listener, config.default_namespace, config.cluster_domain)
        self.balancers: dict[str, Balancer] = {name: RoundRobin() for name in config.clusters}
        self._body_timeout = config.limits.downstream_idle_timeout

    def __repr__(self) -> str:
        return f"<Pipeline {self.router!r} [{len(self.balancers)} clusters]>"

    async def handle(self, down: Downstream, request: h11.Request, ex: Exchange) -> bool:
        """Proxy one request; True when the client connection may be kept alive."""
        host, path = request_authority(request.target, request.headers)
        ex.authority, ex.path = host.decode("latin-1"), path.decode("latin-1")
        request = strip_mesh_headers(request)
        if self.outbound_mesh is not None:
            forget_rule()  # the previous request's policy_rule must not reach this access line
        decision = self.route(ex.authority, ex.path, request.headers)
        ex.cluster = decision.cluster
        target = self.balance(decision)
        ex.upstream = target.endpoint.address
        if self.outbound_mesh is not None:
            target, request = mesh_step(self.outbound_mesh, down.client_ip, request, ex, target)
        return await forward(
            down,
            request,
            ex,
            target,
            self.upstreams,
            host=host,
            path=path,
            body_timeout=self._body_timeout,
            drain=self.runtime.drain,
        )

    def route(self, authority: str, path: str, headers: h11._headers.Headers) -> RouteDecision:
        """Which cluster serves this request (UnknownService / NoRoute otherwise)."""
        return self.router.route(parse_authority(authority), authority.lower(), path, headers)

    def balance(self, decision: RouteDecision) -> Target:
        """Pick the endpoint from the current snapshot (NoHealthyUpstream when none)."""
        cluster = self.runtime.config.clusters.get(decision.cluster)
        if cluster is None:
            raise NoHealthyUpstream(f"cluster {decision.cluster!r} is not configured")
        endpoints = self.runtime.endpoints.current().endpoints(cluster.name)
        balancer = self.balancers.get(cluster.name)
        if balancer is None:
            balancer = self.balancers[cluster.name] = RoundRobin()
        endpoint = balancer.pick(endpoints, trio.current_time())
        if endpoint is None:
            raise NoHealthyUpstream(f"cluster {cluster.name!r} has no endpoints")
        timeout = decision.rule.timeout or cluster.response_timeout
        return Target(cluster, endpoint, timeout)
