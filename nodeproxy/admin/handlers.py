"""The admin API as a pure function: (method, target, headers, now) -> response.

Why pure: every admin answer is a read of the runtime (or, for ``/drain``,
one synchronous flip of ``DrainState``), so it needs no I/O of its own. The
trio/h11 shell in ``server.py`` only parses requests and writes these
responses; everything an operator sees is unit-tested here without sockets.

The route table is data (``ROUTES``): path -> allowed methods, handler and the
description shown on the ``/`` index page. HEAD is answered for every GET
route with the GET's headers and no body. Who may ask at all (the Host check)
is decided before this, in ``access.py``; ``peer_loopback`` says whether the
connection comes from loopback, which ``?include_sensitive=1`` requires.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from nodeproxy.admin import dashboard, dashboard_page
from nodeproxy.admin.clusters import (
    active_clusters,
    cluster_names,
    clusters_text,
    clusters_view,
)
from nodeproxy.admin.dump import config_dump
from nodeproxy.admin.process import process_families, runtime_families
from nodeproxy.admin.rates import History
from nodeproxy.runtime import Runtime
from nodeproxy.stats.prometheus import CONTENT_TYPE as PROMETHEUS_TYPE
from nodeproxy.stats.prometheus import Family, families_json, render, stats_families
from nodeproxy.traffic.explain import explain
from nodeproxy.traffic.sources import SourceCounts

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
HTML = "text/html; charset=utf-8"
DRAIN_REASON = "admin /drain"


@dataclass(frozen=True)
class AdminResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class WorkersView(Protocol):
    """A supervisor's answers over its workers (workers/supervisor.py)."""

    async def refresh(self, clusters: bool, active_only: bool = False) -> None:
        """Fetch fresh numbers from every worker (bounded); the reads below use them."""

    def families(self, now: float) -> list[Family]: ...
    def clusters(self, now: float, active_only: bool = False) -> dict[str, Any]: ...
    def sources(self, now: float) -> list[tuple[str, SourceCounts]]: ...
    def not_ready(self) -> str | None: ...


@dataclass(frozen=True)
class AdminContext:
    """What the handlers read: the runtime, and when the admin server started (trio clock).

    With ``workers`` (a supervisor), stats and ``/clusters`` are the workers' merged.
    """

    runtime: Runtime
    started_at: float
    workers: WorkersView | None = None
    history: History = field(default_factory=History)  # the dashboard's rates


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]  # the last value of each parameter
    headers: Mapping[str, str]  # lowercased names
    now: float
    query_all: Mapping[str, list[str]] = field(default_factory=dict)  # repeated parameters
    peer_loopback: bool = False  # the admin connection comes from 127.0.0.0/8 or ::1


Handler = Callable[[AdminContext, Request], AdminResponse]


def respond(status: int, body: str | bytes, content_type: str = TEXT) -> AdminResponse:
    data = body.encode() if isinstance(body, str) else body
    return AdminResponse(
        status,
        (
            ("content-type", content_type),
            ("content-length", str(len(data))),
            ("cache-control", "no-cache, no-store"),
            ("x-content-type-options", "nosniff"),
        ),
        data,
    )


def refuse(status: int, body: str, cause: str) -> AdminResponse:
    """An error answer with ``x-nodeproxy-error: <cause>``, as the data path sends them."""
    resp = respond(status, body)
    return AdminResponse(status, (*resp.headers, ("x-nodeproxy-error", cause)), resp.body)


def respond_json(status: int, data: Any) -> AdminResponse:
    return respond(status, json.dumps(data, indent=2, sort_keys=False) + "\n", JSON)


def all_families(ctx: AdminContext, now: float) -> list[Family]:
    if ctx.workers is not None:
        return ctx.workers.families(now)
    rt = ctx.runtime
    return stats_families(rt.stats) + runtime_families(rt, now, ctx.started_at) + process_families()


# -- handlers -----------------------------------------------------------------


def not_ready_reason(runtime: Runtime, workers: WorkersView | None = None) -> str:
    if runtime.drain.draining:
        return f"draining: {runtime.drain.reason}"
    for ok, why in runtime.health():
        if not ok:
            return why
    if workers is not None and (down := workers.not_ready()) is not None:
        return f"starting: {down}"
    if not runtime.listeners_ready:
        return "starting: listeners not ready"
    waiting = runtime.endpoints.waiting_for()
    return "starting: endpoints not synced" + (f" (waiting for {waiting})" if waiting else "")


def get_ready(ctx: AdminContext, req: Request) -> AdminResponse:
    if ctx.runtime.ready:
        warnings = "".join(f"warning: {why}\n" for _, why in ctx.runtime.health())
        return respond(200, "LIVE\n" + warnings)
    return respond(503, not_ready_reason(ctx.runtime, ctx.workers) + "\n")


def get_healthz(ctx: AdminContext, req: Request) -> AdminResponse:
    return respond(200, "ok\n")


def get_prometheus(ctx: AdminContext, req: Request) -> AdminResponse:
    return respond(200, render(all_families(ctx, req.now)), PROMETHEUS_TYPE)


def get_stats(ctx: AdminContext, req: Request) -> AdminResponse:
    if req.query.get("format") == "prometheus":
        return get_prometheus(ctx, req)
    return respond_json(200, families_json(all_families(ctx, req.now)))


def get_clusters(ctx: AdminContext, req: Request) -> AdminResponse:
    if ctx.workers is not None:
        view = ctx.workers.clusters(req.now)
    else:
        view = clusters_view(ctx.runtime, req.now)
    fmt = req.query.get("format", "json")
    if fmt == "text":
        return respond(200, clusters_text(view))
    if fmt != "json":
        return respond(400, f"unknown format {fmt!r}: use json or text\n")
    return respond_json(200, view)


def get_explain(ctx: AdminContext, req: Request) -> AdminResponse:
    """``?authority=&path=&header=k:v&source=ip[:port]&method=&listener=``: no request sent."""
    authority = req.query.get("authority")
    if not authority:
        return respond(400, "authority is required: /explain?authority=svc.ns&path=/\n")
    headers: list[tuple[str, str]] = []
    for raw in req.query_all.get("header", []):  # repeatable: &header=a:1&header=b:2
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            return respond(400, "header must be name:value\n")
        headers.append((name, value))
    report = explain(
        ctx.runtime,
        authority=authority,
        path=req.query.get("path", "/"),
        headers=headers,
        source=req.query.get("source", ""),
        method=req.query.get("method", "GET"),
        listener=req.query.get("listener"),
        now=req.now,
    )
    return respond_json(200, report)


def get_config_dump(ctx: AdminContext, req: Request) -> AdminResponse:
    """``?include_sensitive=1`` shows ``${VAR}`` values and matcher values, to loopback only."""
    flag = req.query.get("include_sensitive", "0").lower()
    if flag not in ("0", "1", "false", "true"):
        return respond(400, "include_sensitive must be 1 or 0\n")
    include = flag in ("1", "true")
    if include and not req.peer_loopback:
        return refuse(403, "include_sensitive is answered on loopback only\n", "admin_not_loopback")
    return respond_json(200, config_dump(ctx.runtime.config, include_sensitive=include))


def post_drain(ctx: AdminContext, req: Request) -> AdminResponse:
    # A browser page can send a simple cross-site POST to 127.0.0.1; refuse those.
    if "origin" in req.headers or req.headers.get("sec-fetch-site", "none") not in (
        "none",
        "same-origin",
    ):
        return respond(403, "cross-origin drain refused\n")
    ctx.runtime.drain.start(DRAIN_REASON)
    return respond(202, f"draining ({ctx.runtime.drain.reason})\n")


def get_index(ctx: AdminContext, req: Request) -> AdminResponse:
    """The live dashboard (``dashboard_page.py``), with every other endpoint in its nav bar."""
    nav = [("POST" if "POST" in r.methods else "GET", p, r.doc) for p, r in ROUTES.items()]
    resp = respond(200, dashboard_page.page(nav), HTML)
    extra = (("content-security-policy", dashboard_page.CSP), ("x-frame-options", "DENY"))
    return AdminResponse(resp.status, (*resp.headers, *extra), resp.body)


def get_dashboard_json(ctx: AdminContext, req: Request) -> AdminResponse:
    """What the dashboard draws, at ``now``; rates against earlier polls (``ctx.history``)."""
    rt = ctx.runtime
    if ctx.workers is not None:
        view = ctx.workers.clusters(req.now, active_only=True)
        sources = ctx.workers.sources(req.now)
        families = ctx.workers.families(req.now)
        active = {c["name"] for c in view["clusters"]}
    else:  # only the services this node talks to: discovery may know thousands
        active = active_clusters(rt)
        view = clusters_view(rt, req.now, only=active)
        sources = rt.sources.items()
        families = stats_families(rt.stats)
    idle = [name for name in cluster_names(rt) if name not in active]
    node = {
        "name": rt.config.node_name,
        "ready": rt.ready,
        "state": "ready" if rt.ready else not_ready_reason(rt, ctx.workers),
        "draining": rt.drain.draining,
        "uptime_s": round(req.now - ctx.started_at, 3),
    }
    built = dashboard.build(view, families, sources, node, req.now, ctx.history, idle)
    return respond_json(200, built)


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    handler: Handler
    doc: str


GET = frozenset({"GET", "HEAD"})
ROUTES: dict[str, Route] = {
    "/": Route(GET, get_index, "Live dashboard: services, endpoints, rates, sources."),
    "/dashboard.json": Route(GET, get_dashboard_json, "What the dashboard shows, as JSON."),
    "/ready": Route(GET, get_ready, "200 LIVE when serving; 503 while starting or draining."),
    "/healthz": Route(GET, get_healthz, "200 while the process runs (also while draining)."),
    "/stats/prometheus": Route(GET, get_prometheus, "Metrics in Prometheus text format 0.0.4."),
    "/stats": Route(GET, get_stats, "All counters, gauges and histograms as JSON."),
    "/clusters": Route(
        GET, get_clusters, "Clusters, endpoints, state and counters (JSON; ?format=text)."
    ),
    "/explain": Route(
        GET,
        get_explain,
        "Where a request would go and why (?authority=&path=&header=k:v&source=); sends nothing.",
    ),
    "/config_dump": Route(
        GET,
        get_config_dump,
        "The effective config as JSON, secrets redacted (?include_sensitive=1: loopback only).",
    ),
    "/drain": Route(
        frozenset({"POST"}), post_drain, "Start a graceful drain (like SIGTERM); answers 202."
    ),
}


def handle(
    ctx: AdminContext,
    method: str,
    target: str,
    headers: Mapping[str, str],
    now: float,
    *,
    peer_loopback: bool = False,
) -> AdminResponse:
    """Answer one admin request that passed ``access.check_request``; lowercase header names."""
    parts = urlsplit(target)
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/")
    route = ROUTES.get(path)
    if route is None:
        return respond(404, f"no admin endpoint {path!r}; see / for the list\n")
    if method not in route.methods:
        resp = respond(405, f"method {method} not allowed on {path}\n")
        allow = ", ".join(sorted(route.methods))
        return AdminResponse(resp.status, (*resp.headers, ("allow", allow)), resp.body)
    query_all = parse_qs(parts.query)
    query = {k: v[-1] for k, v in query_all.items()}
    request = Request(method, path, query, headers, now, query_all, peer_loopback)
    resp = route.handler(ctx, request)
    if method == "HEAD":
        return AdminResponse(resp.status, resp.headers, b"")
    return resp
