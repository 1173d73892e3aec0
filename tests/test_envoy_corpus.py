"""Real Envoy bootstraps from public repositories, run as Envoy would run them.

``tests/data/envoy/`` holds static bootstraps copied unchanged from public
repositories (provenance and licences in its README). ``VERDICTS`` is what we
promise for each: ``LOADS``, or the field path whose refusal names what
nodeproxy does not do: a prefix of ``ConfigError.field`` once ``compact`` has
dropped list indices and shortened a listener's network filter config to
``filter`` and its virtual hosts to ``vhost``. A loader change that moves a
file fails here; when it is progress, paste what
``python -m tests.test_envoy_corpus --table`` prints over ``VERDICTS``. Without
``--table`` the command prints the counts (how many load, the refusals grouped
by field and the value they name) for the notes; ``pytest -s`` shows them too.

For every file that loads, each route is exercised against local backends:
listeners move to 127.0.0.1:0, every cluster gets its own backend, and for
each route a request is built that Envoy's route matching would send there
(host, path, headers, query). Where it should land is worked out by a small
reference of Envoy's matching written here from the Envoy docs, read straight
from the raw YAML, so a loader that drops or reorders a match shows too.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import yaml

from nodeproxy.config import load_config
from nodeproxy.config.model import Config, EndpointConfig
from nodeproxy.errors import ConfigError
from tests.helpers.backends import run_proxy

CORPUS = Path(__file__).parent / "data" / "envoy"
ENV: dict[str, str] = {}  # no ${VAR} is set: a file that needs one says so by name
LOADS = "loads"

# What each file does today, by verdict: LOADS, or the compact field path that refuses it.
VERDICTS: dict[str, tuple[str, ...]] = {
    LOADS: (
        "envoyproxy__envoy__configs_freebind_freebind.yaml",
        "envoyproxy__envoy__configs_front-proxy_envoy.yaml",
        "envoyproxy__envoy__docs_root_configuration_http_http_conn_man__include_header_formatters.yaml",
        "envoyproxy__envoy__docs_root_configuration_http_http_filters__include_local-rate-limit-route-specific-configuration.yaml",
        "envoyproxy__envoy__docs_root_intro_arch_overview_upstream__include_load-assignment.yaml",
        "envoyproxy__envoy__examples_cache_service-envoy.yaml",
        "envoyproxy__envoy__examples_cors_backend_front-envoy.yaml",
        "envoyproxy__envoy__examples_cors_frontend_front-envoy.yaml",
        "envoyproxy__envoy__examples_datadog-tracing_front-envoy-datadog.yaml",
        "envoyproxy__envoy__examples_front-proxy_service-envoy-2.yaml",
        "envoyproxy__envoy__examples_front-proxy_service-envoy.yaml",
        "envoyproxy__envoy__examples_grpc-bridge_server_envoy-proxy.yaml",
        "envoyproxy__envoy__examples_healthchecks_front-envoy.yaml",
        "envoyproxy__envoy__examples_jaeger-native-tracing_front-envoy-jaeger.yaml",
        "envoyproxy__envoy__examples_jaeger-native-tracing_service2-envoy-jaeger.yaml",
        "envoyproxy__envoy__examples_jaeger-tracing_front-envoy-jaeger.yaml",
        "envoyproxy__envoy__examples_jaeger-tracing_service1-envoy-jaeger.yaml",
        "envoyproxy__envoy__examples_local_ratelimit_ratelimit-envoy.yaml",
        "envoyproxy__envoy__examples_skywalking_envoy-2.yaml",
        "envoyproxy__envoy__examples_skywalking_envoy-front-proxy.yaml",
        "envoyproxy__envoy__examples_websocket_envoy-ws-route.yaml",
        "envoyproxy__envoy__examples_websocket_envoy-ws.yaml",
        "envoyproxy__envoy__examples_zipkin-tracing_front-envoy-zipkin.yaml",
        "envoyproxy__envoy__examples_zipkin-tracing_service1-envoy-zipkin.yaml",
        "envoyproxy__envoy__examples_zipkin-tracing_service2-envoy-zipkin.yaml",
        "envoyproxy__examples__load-reporting-service_envoy.yaml",
        "envoyproxy__ratelimit__examples_envoy_mock.yaml",
    ),
    "filter.http_filters[].typed_config.@type": (
        "envoyproxy__envoy__examples_cache_front-envoy.yaml",
        "envoyproxy__envoy__examples_csrf_samesite_front-envoy.yaml",
        "envoyproxy__envoy__examples_ext_authz_config_http-service.yaml",
        "envoyproxy__envoy__examples_ext_authz_config_opa-service_v2.yaml",
        "envoyproxy__envoy__examples_golang-http_envoy.yaml",
        "envoyproxy__envoy__examples_gzip_gzip-envoy.yaml",
        "envoyproxy__envoy__examples_lua_envoy.yaml",
        "envoyproxy__examples__jaeger-tracing_envoy.yaml",
        "envoyproxy__ratelimit__examples_envoy_proxy.yaml",
        "ioggstream__envoy-ratelimit-quickstart__front-envoy.yaml",
        "proxy-wasm__proxy-wasm-rust-sdk__examples_hello_world_envoy.yaml",
        "proxy-wasm__proxy-wasm-rust-sdk__examples_http_auth_random_envoy.yaml",
        "proxy-wasm__proxy-wasm-rust-sdk__examples_http_headers_envoy.yaml",
        "tetratelabs__proxy-wasm-go-sdk__examples_helloworld_envoy.yaml",
        "tetratelabs__proxy-wasm-go-sdk__examples_http_headers_envoy.yaml",
        "tetratelabs__proxy-wasm-go-sdk__examples_http_routing_envoy.yaml",
    ),
    "filter.http_filters[].name": (
        "envoyproxy__envoy-wasm__examples_wasm_envoy.yaml",
        "envoyproxy__envoy__examples_fault-injection_envoy.yaml",
        "envoyproxy__envoy__examples_grpc-bridge_client_envoy-proxy.yaml",
        "grpc__grpc-web__net_grpc_gateway_examples_echo_envoy.yaml",
        "grpc__grpc-web__net_grpc_gateway_examples_helloworld_envoy.yaml",
        "grpc__grpc-web__test_interop_envoy.yaml",
    ),
    "clusters[].transport_socket.typed_config.@type": (
        "envoyproxy__envoy__configs_envoy-demo.yaml",
        "envoyproxy__envoy__configs_google_com_proxy.v2.yaml",
        "envoyproxy__envoy__examples_double-proxy_envoy-frontend.yaml",
        "envoyproxy__envoy__examples_tls_envoy-http-https.yaml",
    ),
    "filter.@type": (
        "envoyproxy__envoy__examples_mysql_envoy.yaml",
        "envoyproxy__envoy__examples_tls_envoy-https-passthrough.yaml",
    ),
    "clusters[].common_lb_config": ("envoyproxy__envoy__examples_grpc-s2s_hello_envoy-proxy.yaml",),
    "clusters[].lb_policy": ("envoyproxy__envoy__examples_redis_envoy.yaml",),
    "clusters[].load_assignment.endpoints[].priority": (
        "envoyproxy__envoy__examples_locality-load-balancing_envoy-proxy.yaml",
    ),
    "clusters[].type": ("envoyproxy__envoy__configs_original-dst-cluster_proxy_config.yaml",),
    "filter.local_reply_config": (
        "envoyproxy__envoy__docs_root_configuration_http_http_conn_man__include_local-reply.yaml",
    ),
    "listeners[].filter_chains[].transport_socket.typed_config.@type": (
        "envoyproxy__envoy__examples_front-proxy_front-envoy.yaml",
    ),
    "vhost.routes[].direct_response.body.filename": (
        "envoyproxy__envoy-perf__siege_front-proxy.yaml",
    ),
    "vhost.routes[].match.connect_matcher": ("envoyproxy__envoy__configs_proxy_connect.yaml",),
    "vhost.routes[].route.request_mirror_policies": (
        "envoyproxy__envoy__examples_route-mirror_envoy.yaml",
    ),
}
EXPECTED = {name: verdict for verdict, names in VERDICTS.items() for name in names}


@dataclass(frozen=True)
class Outcome:
    field: str | None  # None: loaded
    message: str = ""
    warnings: int = 0

    @property
    def verdict(self) -> str:
        return LOADS if self.field is None else self.field


def corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.yaml"))


def outcome(name: str) -> Outcome:
    try:
        config = load_config(str(CORPUS / name), env=ENV)
    except ConfigError as exc:
        return Outcome(exc.field, exc.message)
    return Outcome(None, warnings=len(config.warnings))


def survey() -> dict[str, Outcome]:
    return {name: outcome(name) for name in corpus_files()}


def compact(path: str) -> str:
    """A field path without list indices; a listener's network filter config is ``filter``."""
    key = re.sub(r"\[\d+\]", "[]", path).replace("static_resources.", "")
    # Envoy reads a single item for a list, so the indices may be missing.
    net_filter = r"^listeners(\[\])?\.filter_chains(\[\])?\.filters(\[\])?\.(typed_)?config\b"
    key = re.sub(net_filter, "filter", key)
    return key.replace("filter.route_config.virtual_hosts[]", "vhost")


def group(path: str, message: str) -> str:
    """A refusal's reason: its compact path and the value it names, if any."""
    quoted = re.search(r"'([^']*)'", message)
    named = quoted and quoted.group(1) != "Envoy bootstrap"
    return f"{compact(path)} ({quoted.group(1)})" if quoted and named else compact(path)


def summary(outcomes: dict[str, Outcome]) -> str:
    loaded = [o for o in outcomes.values() if o.field is None]
    refused = Counter(group(o.field, o.message) for o in outcomes.values() if o.field)
    lines = [
        f"{len(outcomes)} Envoy bootstraps: {len(loaded)} load "
        f"({sum(o.warnings > 0 for o in loaded)} with warnings), "
        f"{sum(refused.values())} refused",
        *(f"  {n:3d}  {key}" for key, n in refused.most_common()),
    ]
    return "\n".join(lines)


def table(outcomes: dict[str, Outcome]) -> str:
    """``VERDICTS`` as it should read for these outcomes, ready to paste."""
    by: dict[str, list[str]] = {}
    for name, o in outcomes.items():
        verdict = LOADS if o.field is None else compact(o.field)
        while len(verdict) > 80 and "." in verdict:  # a prefix is enough; keep lines short
            verdict = verdict.rsplit(".", 1)[0]
        by.setdefault(verdict, []).append(name)
    order = sorted(by, key=lambda v: (v != LOADS, -len(by[v]), v))
    rows = "".join(
        f"    {'LOADS' if v == LOADS else repr(v)}: (\n"
        + "".join(f"        {n!r},\n" for n in by[v])
        + "    ),\n"
        for v in order
    )
    return "VERDICTS: dict[str, tuple[str, ...]] = {\n" + rows.replace("'", '"') + "}"


def test_the_table_lists_exactly_the_corpus() -> None:
    assert sorted(EXPECTED) == corpus_files()


@pytest.mark.parametrize("name", corpus_files())
def test_every_file_is_a_static_bootstrap(name: str) -> None:
    doc = yaml.safe_load((CORPUS / name).read_text(encoding="utf-8"))
    assert as_list(doc["static_resources"]["listeners"]), "xDS-only files are not in the corpus"


@pytest.mark.parametrize("name", corpus_files())
def test_loads_or_refuses_by_name(name: str) -> None:
    got = outcome(name)
    hint = "if this is progress, update EXPECTED: python -m tests.test_envoy_corpus --table"
    want = EXPECTED.get(name, "?")
    said = "loads" if got.field is None else f"refused at {got.field}: {got.message}"
    assert agrees(want, got), f"expected {want}, {said}\n{hint}"


def test_corpus_summary() -> None:
    """The whole picture in one place: printed with -s, and in the message when it moves."""
    outcomes = survey()
    print("\n" + summary(outcomes))
    moved = [n for n, o in outcomes.items() if not agrees(EXPECTED.get(n, "?"), o)]
    assert not moved, f"{moved} moved\n{summary(outcomes)}\nnew table:\n{table(outcomes)}"


def agrees(want: str, got: Outcome) -> bool:
    if want == LOADS or got.field is None:
        return want == got.verdict
    return compact(got.field).startswith(want) and bool(got.message.strip())


# --- Envoy's route matching, read from the raw YAML -------------------------------------


def as_list(value: Any) -> list[Any]:
    """Envoy's JSON parser reads a single value for a repeated field as a one-item list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Probe:
    host: str
    method: str
    target: str  # path and query
    headers: tuple[tuple[str, str], ...]


def connection_manager(listener: dict[str, Any]) -> dict[str, Any] | None:
    for chain in as_list(listener.get("filter_chains")):
        for f in as_list(chain.get("filters")):
            cfg = f.get("typed_config") or f.get("config") or {}
            if "http_connection_manager" in str(f.get("name", "")) or str(
                cfg.get("@type", "")
            ).endswith("HttpConnectionManager"):
                return dict(cfg)
    return None


def domains(vhost: dict[str, Any]) -> list[str]:
    return [str(d).lower() for d in as_list(vhost.get("domains"))]


def pick_vhost(vhosts: list[dict[str, Any]], host: str) -> dict[str, Any] | None:
    """Exact, then the longest ``*suffix``, then the longest ``prefix*``, then ``*``.

    Without ``strip_*_host_port`` a port in the Host header is part of the name.
    """
    host = host.lower()
    for vh in vhosts:
        if host in domains(vh):
            return vh
    for wild, hit in ((str.startswith, str.endswith), (str.endswith, str.startswith)):
        best = [
            (len(d), vh)
            for vh in vhosts
            for d in domains(vh)
            if d != "*" and wild(d, "*") and len(host) >= len(d) and hit(host, d.strip("*"))
        ]
        if best:
            return max(best, key=lambda t: t[0])[1]
    return next((vh for vh in vhosts if "*" in domains(vh)), None)


_STRING_KINDS = ("exact", "prefix", "suffix", "contains")


def _string_match(m: dict[str, Any], value: str) -> bool | None:
    """A StringMatcher (None: a kind this reference does not evaluate)."""
    if m.get("ignore_case"):
        value, m = value.lower(), {k: str(v).lower() for k, v in m.items()}
    for kind in _STRING_KINDS:
        if kind in m:
            x = str(m[kind])
            return {"exact": value == x, "prefix": value.startswith(x)}.get(
                kind, value.endswith(x) if kind == "suffix" else x in value
            )
    if "safe_regex" in m:
        return re.fullmatch(str(m["safe_regex"]["regex"]), value) is not None
    return None


def _matcher(hm: dict[str, Any]) -> dict[str, Any]:
    """A HeaderMatcher's value test as a StringMatcher; {} for a presence test."""
    if "string_match" in hm:
        return dict(hm["string_match"])
    legacy = {k: hm[k + "_match"] for k in (*_STRING_KINDS, "safe_regex") if k + "_match" in hm}
    other = {k for k in hm if k.endswith("_match") and k not in ("invert_match", "present_match")}
    return legacy if legacy or not other else {"unknown": True}


def header_ok(hm: dict[str, Any], value: str | None) -> bool | None:
    """Envoy's HeaderUtility::matchHeaders for one matcher (None: cannot tell)."""
    invert = bool(hm.get("invert_match", False))
    matcher = _matcher(hm)
    presence = not matcher  # present_match, or a name alone
    want_present = bool(hm.get("present_match", True))
    if value is None:
        return presence and (want_present if invert else not want_present)
    hit = want_present if presence else _string_match(matcher, value)
    return None if hit is None else hit != invert


def route_matches(match: dict[str, Any], probe: Probe) -> bool | None:
    """Envoy's RouteMatch on one request; None when this reference cannot tell."""
    path, query = probe.target.partition("?")[::2]
    cs = match.get("case_sensitive", True) is not False
    fold = (lambda s: s) if cs else str.lower
    if "prefix" in match:
        ok = fold(probe.target).startswith(fold(str(match["prefix"])))
    elif "path" in match:
        ok = fold(path) == fold(str(match["path"]))
    elif "safe_regex" in match:
        ok = re.fullmatch(str(match["safe_regex"]["regex"]), path) is not None
    elif "path_separated_prefix" in match:
        p = str(match["path_separated_prefix"])
        ok = path == p or path.startswith(p + "/")
    else:
        return None
    headers = dict(probe.headers) | {":method": probe.method, ":authority": probe.host}
    for hm in as_list(match.get("headers")):
        got = header_ok(hm, headers.get(str(hm["name"]).lower()))
        if got is None:
            return None
        ok = ok and got
    params = dict(kv.partition("=")[::2] for kv in query.split("&") if kv)
    for qm in as_list(match.get("query_parameters")):
        value = params.get(str(qm["name"]))
        if value is not None and "string_match" in qm:
            got = _string_match(qm["string_match"], value)
        elif value is not None and "value" in qm:  # v2
            got = value == str(qm["value"])
        else:
            got = value is not None
        ok = ok and bool(got)
    if "grpc" in match:  # exactly application/grpc, or application/grpc+<codec>
        ok = (
            ok
            and re.fullmatch(r"application/grpc(\+.*)?", headers.get("content-type", ""))
            is not None
        )
    if "runtime_fraction" in match or "tls_context" in match:
        return None
    return ok


def probe_for(match: dict[str, Any], host: str) -> Probe | None:
    """A request this route's match accepts (None: this reference cannot build one)."""
    if "prefix" in match:
        path = str(match["prefix"]) or "/"
    elif "path" in match or "path_separated_prefix" in match:
        path = str(match.get("path", match.get("path_separated_prefix")))
    else:
        return None
    method, headers = "GET", []
    for hm in as_list(match.get("headers")):
        name = str(hm["name"]).lower()
        value = _satisfying(hm)
        if name == ":method" and value is not None:
            method = value
        elif value is not None and not name.startswith(":") and name != "host":
            headers.append((name, value))
    if "grpc" in match:
        headers.append(("content-type", "application/grpc"))
    query = []
    for qm in as_list(match.get("query_parameters")):
        sm = qm.get("string_match", {})
        query.append(f"{qm['name']}={sm.get('exact', sm.get('prefix', 'corpus'))}")
    target = path + ("?" + "&".join(query) if query else "")
    return Probe(host, method, target, tuple(headers))


def _satisfying(hm: dict[str, Any]) -> str | None:
    """A header value that makes this matcher true (None: send no such header)."""
    matcher, invert = _matcher(hm), bool(hm.get("invert_match", False))
    if not matcher:
        return "1" if bool(hm.get("present_match", True)) != invert else None
    if invert:
        return "corpus-other"
    return next((str(matcher[k]) for k in _STRING_KINDS if k in matcher), None)


def host_for(vhost: dict[str, Any], vhosts: list[dict[str, Any]]) -> str | None:
    for d in domains(vhost):
        host = "corpus.example" if d == "*" else ("x" + d[1:] if d.startswith("*") else d)
        host = host[:-1] + "x" if host.endswith("*") else host
        if pick_vhost(vhosts, host) is vhost:
            return host
    return None


def first_route(vhost: dict[str, Any] | None, probe: Probe) -> dict[str, Any] | None:
    """The first route whose match accepts ``probe``, {} when none does (None: cannot tell)."""
    for r in as_list(vhost.get("routes") if vhost else None):
        hit = route_matches(r.get("match", {}), probe)
        if hit is None or hit:
            return dict(r) if hit else None
    return {}


def answer_of(r: dict[str, Any]) -> tuple[str, Any] | None:
    """("cluster", names) | ("direct", (status, body)) | ("redirect", code) | ("404", None)."""
    if not r:
        return ("404", None)
    if "route" in r:
        action = r["route"]
        if "cluster" in action:
            return ("cluster", {action["cluster"]})
        if "weighted_clusters" in action:
            ws = as_list(action["weighted_clusters"].get("clusters"))
            return ("cluster", {w["name"] for w in ws if int(w.get("weight", 1)) > 0})
        return None
    if "direct_response" in r:
        dr = r["direct_response"]
        return ("direct", (int(dr["status"]), dr.get("body", {}).get("inline_string")))
    if "redirect" in r:
        codes = {"FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307}
        codes |= {"PERMANENT_REDIRECT": 308}
        return ("redirect", codes.get(str(r["redirect"].get("response_code", "")).upper(), 301))
    return None


# --- the routing smoke test ------------------------------------------------------------


def raw_listeners(name: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((CORPUS / name).read_text(encoding="utf-8"))
    return [dict(item) for item in as_list(doc["static_resources"].get("listeners"))]


def probes(listener: dict[str, Any]) -> Iterator[tuple[Probe, tuple[str, Any], dict[str, Any]]]:
    hcm = connection_manager(listener) or {}
    vhosts = [dict(v) for v in as_list((hcm.get("route_config") or {}).get("virtual_hosts"))]
    if not vhosts:
        yield Probe("corpus.example", "GET", "/", ()), ("404", None), {}
    elif not any("*" in domains(vh) for vh in vhosts):
        yield Probe("corpus-elsewhere.invalid", "GET", "/", ()), ("404", None), {}
    for vh in vhosts:
        host = host_for(vh, vhosts)
        if host is None:  # every name it has is taken by a more specific virtual host
            continue
        miss = {"match": {"prefix": "/~corpus-no-route"}}  # whatever Envoy does with it
        for r in [*as_list(vh.get("routes")), miss]:
            probe = probe_for(r.get("match", {}), host)
            route = None if probe is None else first_route(vh, probe)
            answer = None if route is None else answer_of(route)
            if probe and route is not None and answer:
                yield probe, answer, route


@dataclass
class Echo:
    """One cluster's stand-in: every request gets 200 and what it saw (no special paths).

    ``seen`` maps each probe's mark to the target and headers that arrived.
    """

    port: int = 0
    seen: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    await stream.send_all(self._answer(conn, request))
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                elif not isinstance(event, h11.Data):
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    def _answer(self, conn: h11.Connection, request: h11.Request) -> bytes:
        headers = {k.decode(): v.decode() for k, v in request.headers}
        self.seen[headers.get("x-corpus-probe", "")] = (request.target.decode(), headers)
        body = json.dumps({"target": request.target.decode(), "headers": headers}).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = conn.send(h11.Response(status_code=200, headers=head)) or b""
        if request.method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        return out + (conn.send(h11.EndOfMessage()) or b"")


@asynccontextmanager
async def local_backends(config: Config) -> AsyncIterator[tuple[Config, dict[str, Echo]]]:
    """``config`` on loopback: listeners on 127.0.0.1:0, each cluster's endpoints one ``Echo``."""
    echoes = {name: Echo() for name in config.clusters}
    async with trio.open_nursery() as nursery:
        for echo in echoes.values():
            serve = partial(trio.serve_tcp, echo.handle, 0, host="127.0.0.1")
            echo.port = (await nursery.start(serve))[0].socket.getsockname()[1]
        clusters = {
            n: replace(c, endpoints=(EndpointConfig("127.0.0.1", echoes[n].port),))
            for n, c in config.clusters.items()
        }
        listeners = tuple(replace(x, host="127.0.0.1", port=0) for x in config.listeners)
        yield replace(config, clusters=clusters, listeners=listeners), echoes
        nursery.cancel_scope.cancel()


_ids = count()


async def check(
    client: httpx.AsyncClient, probe: Probe, answer: tuple[str, Any], route: dict[str, Any],
    backends: dict[str, Echo],
) -> None:  # fmt: skip
    mark = str(next(_ids))
    headers = [("host", probe.host), ("x-corpus-probe", mark), *probe.headers]
    r = await client.request(probe.method, probe.target, headers=headers)
    where = f"{probe} -> {answer}: got {r.status_code} {r.text[:200]!r}"
    hit = [n for n, echo in backends.items() if mark in echo.seen]
    kind, value = answer
    if kind == "cluster":
        assert r.status_code == 200, where
        assert len(hit) == 1, f"{where}, reached {hit}"
        assert hit[0] in value, f"{where}, reached {hit}"
        target, seen = backends[hit[0]].seen[mark]
        action = route.get("route", {})
        host = action.get("host_rewrite_literal", action.get("host_rewrite"))
        if host is not None:
            assert seen.get("host") == host, where
        if "prefix_rewrite" in action:
            prefix = str(route["match"]["prefix"])
            assert target == action["prefix_rewrite"] + probe.target[len(prefix) :], where
        elif "regex_rewrite" not in action:
            assert target == probe.target, where
        return
    assert not hit, f"{where}, but reached {hit}"
    if kind == "direct":
        status, body = value
        assert r.status_code == status, where
        assert body is None or r.text == body, where
    elif kind == "redirect":
        assert r.status_code == value, where
        assert "location" in r.headers, where
    else:
        assert r.status_code == 404, where


@pytest.mark.parametrize("name", [n for n, v in EXPECTED.items() if v == LOADS])
async def test_routes_of_loaded_files_reach_what_envoy_would(name: str) -> None:
    config = load_config(str(CORPUS / name), env=ENV)
    raw = [x for x in raw_listeners(name) if connection_manager(x) is not None]
    assert len(raw) == len(config.listeners), "one nodeproxy listener per Envoy HTTP listener"
    async with local_backends(config) as (local, backends):
        for listener, spec in zip(local.listeners, raw, strict=True):
            async with (
                run_proxy(replace(local, listeners=(listener,))) as p,
                httpx.AsyncClient(base_url=p.url, trust_env=False) as client,
            ):
                cases = list(probes(spec))
                assert cases, f"no request could be built for listener {listener.name}"
                for probe, answer, route in cases:
                    await check(client, probe, answer, route, backends)


def main(argv: list[str]) -> None:
    outcomes = survey()
    print(table(outcomes) if "--table" in argv else summary(outcomes))


if __name__ == "__main__":
    main(sys.argv[1:])
