"""``GET /explain``: what the proxy would do with a request, without sending anything.

Why: "why did my request go there (or get a 503)?" is the first question
about a proxy that balances by latency, ejects replicas, trips breakers and
splits canaries. This runs the same decision steps as the pipeline (router,
subset, outlier filter, balancer costs, breaker, mesh policy) over the live
per-process state and reports each one, but picks nothing and changes no
counter: no balancer token, no breaker permit, no request, no panic counted.
It reads through ``Traffic.peek`` and the ``peek_*`` views: a cluster no
request has used yet gets no state (the report shows a scratch one, as the
first request would find it), and no endpoint is adopted into the load
table or the outlier detector.

A route that answers itself (``direct_response``, ``redirect``) reports the
answer it would give (status, headers, the redirect's ``Location``); a route
with rewrites reports the target it would send upstream.

Note the router's weighted split is random: each call draws a branch, as a
request would (``rule.weighted`` lists all branches).
"""

from __future__ import annotations

import random
from typing import Any

from nodeproxy.errors import ProxyError, UnknownService
from nodeproxy.mesh.outbound import LISTENER
from nodeproxy.mesh.state import service_of
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.router import Router
from nodeproxy.runtime import Runtime
from nodeproxy.tls.sources import SourceIdentities
from nodeproxy.traffic.state import ClusterTraffic, subset_key


def explain(
    runtime: Runtime,
    *,
    authority: str,
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
    source: str = "",
    method: str = "GET",
    listener: str | None = None,
    now: float,
) -> dict[str, Any]:
    """The decision report for one would-be request (see the module docstring)."""
    config = runtime.config
    hdrs = [(k.strip().lower(), v.strip()) for k, v in headers or []]
    out: dict[str, Any] = {
        "request": {"authority": authority, "path": path, "headers": hdrs, "source": source},
    }
    lc = next((x for x in config.listeners if listener in (None, x.name)), None)
    if lc is None:
        out["error"] = {"status": 404, "cause": "unknown_listener", "detail": listener}
        return out
    out["request"]["listener"] = lc.name
    router = Router(lc, config.default_namespace, config.cluster_domain)
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hdrs]
    try:
        decision = router.route(parse_authority(authority), authority.lower(), path, raw)
        cluster = config.clusters.get(decision.cluster)
        if cluster is None and decision.rule.cluster_from_authority:
            raise UnknownService(f"no service {decision.cluster!r} discovered")
    except ProxyError as err:
        out["error"] = {"status": err.status, "cause": err.cause, "detail": str(err)}
        return out
    rule = decision.rule
    actions = decision.actions
    if actions is not None and actions.local:
        status, answer, _ = actions.local_response(
            scheme="http", authority=authority, target=path, source=source or "0.0.0.0:0"
        )
        kind = "direct_response" if actions.direct is not None else "redirect"
        out["route"] = {"virtual_host": decision.virtual_host.name, "rule": rule.name or None}
        out["decision"] = f"{status} {kind}: answered by the proxy, no upstream"
        out["response"] = {
            "status": status,
            "headers": [[k.decode(), v.decode("latin-1")] for k, v in answer],
        }
        return out
    out["route"] = {
        "virtual_host": decision.virtual_host.name,
        "rule": rule.name or None,
        "cluster": decision.cluster,
        "subset": dict(decision.subset) or None,
        "weighted": [
            {"cluster": w.cluster, "subset": dict(w.subset) or None, "weight": w.weight}
            for w in rule.weighted
        ],
        "timeout": rule.timeout,
    }
    if actions is not None:  # what the route changes on the way up
        out["route"]["upstream_target"] = actions.path(path) if actions.rewrites else path
        out["route"]["host_rewrite"] = rule.host_rewrite or (
            "auto (the endpoint)" if rule.auto_host_rewrite else None
        )
    if cluster is None:
        out["error"] = {"status": 503, "cause": "no_healthy_upstream", "detail": "not configured"}
        return out
    state = runtime.traffic.peek(cluster) or ClusterTraffic(
        cluster, random.Random(0), config.node_name
    )
    endpoints = runtime.endpoints.current().endpoints(cluster.name)
    eligible = {ep.address for ep in state.peek_candidates(endpoints, decision.subset, now)}
    wanted = decision.subset.items()
    candidates = []
    for ep in endpoints:
        row: dict[str, Any] = {
            "address": ep.address,
            "labels": dict(ep.labels),
            "node": ep.node,
            "local": bool(config.node_name) and ep.node == config.node_name,
            "in_subset": all(ep.labels.get(k) == v for k, v in wanted),
            "eligible": ep.address in eligible,
        }
        row.update(state.peek_endpoint(ep, now))
        candidates.append(row)
    out["candidates"] = candidates
    traffic = state.describe(now)
    out["breaker"] = traffic["breaker"]
    n = len(eligible)
    where = f" subset {subset_key(decision.subset)}" if decision.subset else ""
    out["decision"] = (
        f"{cluster.lb_policy} over {n} eligible endpoint(s) of {cluster.name}{where}"
        if n
        else f"503 no_healthy_upstream: no endpoint in {cluster.name}{where}"
    )
    breaker = traffic["breaker"]
    if isinstance(breaker, dict) and breaker["state"] == "open":
        out["decision"] = "503 circuit_open: the breaker is open"
    out["policy"] = _policy(runtime, source, service_of(cluster), method, path)
    return out


def _policy(runtime: Runtime, source: str, service: str, method: str, path: str) -> Any:
    """The mesh authorization decision for the caller at ``source`` (None without a mesh)."""
    mesh_config = runtime.config.mesh
    if mesh_config is None:
        return None
    mesh = runtime.mesh  # None in a supervisor: its workers hold the mesh
    sources = (
        mesh.sources
        if mesh is not None
        else SourceIdentities.from_config(mesh_config, runtime.config.node_name)
    )
    ip = source.rpartition(":")[0] if source.count(":") == 1 else source
    caller = sources.lookup(ip) if ip else None
    decision = mesh_config.policy.decide(caller, service, method, path)
    return {
        "listener": LISTENER,
        "caller": str(caller) if caller is not None else None,
        "service": service,
        "allowed": decision.allowed,
        "rule": decision.rule,
    }
