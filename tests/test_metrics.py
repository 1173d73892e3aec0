"""What a Prometheus user sees: real traffic through the real app, then a scrape.

One proxy (``run_app``: config loader, listeners, admin, health checker) in
front of replicas on loopback, driven into an outlier ejection, a retry that
succeeds, an open breaker, a route rate limit, an overload threshold
overflow, a fairness wait and a failing health check. ``GET
/stats/prometheus`` over HTTP is parsed with ``prometheus_client``'s parser
(not ours) and the values are checked against what the traffic must have
produced. The same scrape checks that docs/admin.md documents every family
with exactly the labels it carries, and that the Grafana dashboard in
deploy/ queries only metrics that exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.config.model import Limits
from nodeproxy.server.accounting import Accounting, code_labels
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.stats import names
from nodeproxy.stats.names import CALLER_REQUESTS, HELP, SOURCE_CAP
from nodeproxy.stats.registry import OTHER, Bounded, Stats, labels
from nodeproxy.tls.identity import SpiffeId
from tests.helpers.backends import Backend, backend, free_port
from tests.helpers.mesh import WEB_IP, two_node_mesh
from tests.helpers.mesh import client_from as mesh_client
from tests.helpers.replicas import Replica, keep_alive, replicas

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "admin.md"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

Key = tuple[str, tuple[tuple[str, str], ...]]


def config(*, good: Replica, bad: Replica, ok: Replica, flaky: Replica, broken: Replica,
           sick: Replica, well: Replica, wait: Backend, refused: int) -> str:  # fmt: skip
    return f"""
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
fairness: {{max_concurrent_per_source: 1, max_queue_per_source: 1, max_wait: 10s}}
services:
  - name: ejectme
    lb_policy: round_robin
    outlier_detection: {{consecutive_5xx: 3, base_ejection_time: 60s}}
    endpoints: ["{good.address}", "{bad.address}"]
  - name: retry
    lb_policy: round_robin
    endpoints: ["{flaky.address}", "{ok.address}"]
    routes:
      - name: retry-route
        service: retry
        retries: {{retry_on: 5xx, num_retries: 1}}
  - name: breaker
    circuit_breaker: {{failure_threshold: 2, open_interval: 60s}}
    endpoints: ["{broken.address}"]
  - name: limited
    endpoints: ["{ok.address}"]
    routes:
      - name: limited-route
        service: limited
        rate_limit: {{per_source: {{requests_per_second: 0.01, burst: 1}}}}
  - name: narrow
    overload: {{max_requests: 1}}
    endpoints: ["127.0.0.1:{wait.port}"]
  - name: spent
    endpoints: ["{broken.address}"]
    routes:
      - name: spent-route
        service: spent
        retries: {{retry_on: 5xx, num_retries: 1, budget: {{percent: 0, min_concurrency: 0}}}}
  - name: gone
    endpoints: ["127.0.0.1:{refused}"]
  - name: checked
    health_check: {{path: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 1}}
    endpoints: ["{sick.address}", "{well.address}"]
"""


@asynccontextmanager
async def app(text: str) -> AsyncIterator[AppHandle]:
    async with trio.open_nursery() as nursery:
        handle: AppHandle = await nursery.start(
            lambda task_status: run_app(
                load_config_text(text, env={}), handle_signals=False, task_status=task_status
            )
        )
        yield handle
        handle.runtime.drain.start("test over")
        nursery.cancel_scope.deadline = trio.current_time() + 10


def client_from(source_ip: str) -> httpx.AsyncClient:
    """HTTP from ``source_ip`` (a calling pod's address; the fairness and rate-limit source)."""
    transport = httpx.AsyncHTTPTransport(local_address=source_ip)
    return httpx.AsyncClient(transport=transport, timeout=10, trust_env=False)


async def scrape(admin_port: int) -> str:
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"http://127.0.0.1:{admin_port}/stats/prometheus")
    assert r.status_code == 200
    return r.text


class Scrape:
    """One parsed exposition: family types, HELP texts and every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        self.labels: dict[str, set[str]] = {}  # family -> label names (without ``le``)
        self.samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            # prometheus_client drops a counter's _total from the family name
            name = family.name + "_total" if family.type == "counter" else family.name
            self.types[name] = family.type
            self.help[name] = family.documentation
            for s in family.samples:
                self.labels.setdefault(name, set()).update(k for k in s.labels if k != "le")
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def total(self, name: str, **match: str) -> float:
        """Sum over the samples of ``name`` whose labels include ``match``."""
        return sum(
            v
            for (n, lbls), v in self.samples.items()
            if n == name and all(pair in lbls for pair in match.items())
        )

    def sample_names(self) -> set[str]:
        return {n for n, _ in self.samples}


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check()`` (bounded): a counter the proxy's own tasks move, on real sockets."""
    with trio.fail_after(10):
        while True:
            if check():
                return
            await trio.sleep(0.005)


async def drive(handle: AppHandle, good: Replica, bad: Replica, flaky: Replica,
                wait: Backend) -> None:  # fmt: skip
    """The traffic: one ejection, retries, a breaker, a 429, an overflow, a fairness wait."""
    port = handle.listener_ports["outbound"]
    stats = handle.runtime.stats
    async with keep_alive(port) as c:
        for _ in range(8):  # round robin: bad answers 3 x 500, then it is ejected
            await c.get("ejectme.default")
        for _ in range(4):  # flaky's 503s are retried on ok
            await c.get("retry.default")
        for _ in range(3):  # 2 failures open the breaker, the third is refused
            await c.get("breaker.default")
        for _ in range(2):  # burst 1: the second is answered 429
            await c.get("limited.default")
        assert (await c.get("gone.default"))[0] == 503  # nobody listens there
        assert (await c.get("spent.default"))[0] == 500  # no budget: the 500 in hand
    assert (good.requests, bad.requests) == (5, 3)
    assert flaky.requests >= 1
    url = f"http://127.0.0.1:{port}/"
    async with (
        client_from("127.0.0.2") as pod_a,
        client_from("127.0.0.3") as pod_b,
        trio.open_nursery() as nursery,
    ):
        answers: list[int] = []

        async def get(client: httpx.AsyncClient, path: str) -> None:
            r = await client.get(url + path, headers={"host": "narrow.default"})
            answers.append(r.status_code)

        nursery.start_soon(get, pod_a, "wait")  # holds narrow's only max_requests slot
        await wait.arrived.wait()
        r = await pod_b.get(url, headers={"host": "narrow.default"})
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (503, "overloaded")
        nursery.start_soon(get, pod_a, "x")  # pod a's second request waits for its slot
        waiting = (("listener", "outbound"),)
        await until(lambda: stats.gauge("nodeproxy_fairness_waiting", waiting) == 1)
        wait.release.set()
    assert answers == [200, 200]
    assert stats.sum_counter("nodeproxy_fairness_queued_total") == 1


@dataclass
class Resilience:
    """The scrape after ``drive``, and what the replicas saw."""

    m: Scrape
    good: str  # addresses
    flaky: str
    flaky_requests: int


_MEMO: dict[str, object] = {}  # one run of each scenario per session (plain data only)


async def resilience() -> Resilience:
    found = _MEMO.get("resilience")
    if isinstance(found, Resilience):
        return found
    good, bad = Replica("good"), Replica("bad", status=500)
    ok, flaky, broken = Replica("ok"), Replica("flaky", status=503), Replica("broken", status=500)
    sick, well = Replica("sick", health_status=500), Replica("well")
    async with (
        replicas(good, bad, ok, flaky, broken, sick, well),
        backend() as wait,
    ):
        text = config(good=good, bad=bad, ok=ok, flaky=flaky, broken=broken, sick=sick,
                      well=well, wait=wait, refused=free_port())  # fmt: skip
        async with app(text) as handle:
            stats = handle.runtime.stats
            with trio.fail_after(20):
                await drive(handle, good, bad, flaky, wait)
                await until(
                    lambda: stats.gauge(
                        "nodeproxy_health_check_unhealthy_endpoints", (("cluster", "checked"),)
                    )
                    == 1
                )
                m = Scrape(await scrape(handle.admin_port))
    result = _MEMO["resilience"] = Resilience(m, good.address, flaky.address, flaky.requests)
    return result


async def test_an_ejection_a_retry_an_overflow_and_a_failed_health_check_show_in_prometheus(
) -> None:  # fmt: skip
    r = await resilience()
    m = r.m
    out = "outbound"

    # requests by exact status and class, per route and cluster
    req = "nodeproxy_requests_total"
    eject = {"listener": out, "route": "ejectme", "cluster": "ejectme"}
    assert m.value(req, **eject, response_code="500", code_class="5xx") == 3
    assert m.value(req, **eject, response_code="200", code_class="2xx") == 5
    hist = {"route": "ejectme", "cluster": "ejectme"}
    assert m.value("nodeproxy_request_duration_ms_count", **hist) == 8
    assert m.types["nodeproxy_request_duration_ms"] == "histogram"
    assert m.value("nodeproxy_request_duration_ms_bucket", **hist, le="30000.0") == 8
    # the ejection: total by reason, and active now
    assert (
        m.value("nodeproxy_outlier_ejections_total", cluster="ejectme", reason="consecutive_5xx")
        == 1
    )
    assert m.value("nodeproxy_outlier_ejections_active", cluster="ejectme") == 1
    assert m.value("nodeproxy_outlier_ejections_overflow_total", cluster="ejectme") == 0
    # the retries: every 503 of flaky was retried on ok, and each retry succeeded
    retry = {"route": "retry-route", "cluster": "retry"}
    retried = m.value("nodeproxy_retries_total", **retry, reason="503")
    assert retried == r.flaky_requests
    assert m.value("nodeproxy_retries_succeeded_total", **retry) == retried
    assert m.value(req, listener=out, **retry, response_code="200", code_class="2xx") == 4
    assert m.total("nodeproxy_retries_overflow_total", cluster="retry") == 0
    spent = {"route": "spent-route", "cluster": "spent"}
    assert m.value("nodeproxy_retries_overflow_total", **spent, threshold="budget") == 1
    assert m.total("nodeproxy_retries_total", cluster="spent") == 0
    # a retried 503's connection is not reused: closed, per endpoint
    closed = "nodeproxy_upstream_connections_closed_total"
    assert m.value(closed, cluster="retry", endpoint=r.flaky) == retried
    # the breaker
    assert m.value("nodeproxy_circuit_breaker_openings_total", cluster="breaker") == 1
    assert m.value("nodeproxy_circuit_breaker_rejected_total", cluster="breaker") == 1
    assert m.value("nodeproxy_circuit_breaker_open", cluster="breaker") == 1
    assert m.value("nodeproxy_errors_total", cause="circuit_open") == 1
    # the route rate limit, per source
    limited = {"listener": out, "scope": "route", "source": "127.0.0.1"}
    assert m.value("nodeproxy_rate_limited_total", **limited) == 1
    lim = {"listener": out, "route": "limited-route", "cluster": "limited"}
    assert m.value(req, **lim, response_code="429", code_class="4xx") == 1
    # the overflow, per threshold, and the fairness wait, per source
    narrow = {"cluster": "narrow"}
    assert m.value("nodeproxy_overload_overflow_total", **narrow, threshold="max_requests") == 1
    assert (
        m.value("nodeproxy_overload_overflow_total", **narrow, threshold="max_pending_requests")
        == 0
    )
    assert m.value("nodeproxy_overload_limit", **narrow, threshold="max_requests") == 1
    assert m.value("nodeproxy_overload_active", **narrow, threshold="max_requests") == 0
    assert m.value("nodeproxy_fairness_queued_total", listener=out, source="127.0.0.2") == 1
    assert m.value(req, listener=out, route="narrow", cluster="narrow", response_code="503",
                   code_class="5xx") == 1  # fmt: skip
    # the health checks: sick fails, well passes
    assert m.total("nodeproxy_health_checks_total", cluster="checked", result="failure") == 1
    assert m.total("nodeproxy_health_checks_total", cluster="checked", result="success") == 1
    assert m.value("nodeproxy_health_check_unhealthy_endpoints", cluster="checked") == 1
    # pool connections
    assert m.value("nodeproxy_upstream_connections_opened_total", cluster="ejectme",
                   endpoint=r.good) >= 1  # fmt: skip
    pool = "nodeproxy_upstream_pool_connections"
    assert m.value(pool, cluster="ejectme", endpoint=r.good, state="idle") == 1

    assert m.value("nodeproxy_upstream_connect_failures_total", cluster="gone",
                   endpoint=m_endpoint(m, "gone")) == 1  # fmt: skip
    check_documented(m)


def m_endpoint(m: Scrape, cluster: str) -> str:
    """The one endpoint label of ``cluster``'s connect failures."""
    (found,) = {
        dict(lbls)["endpoint"]
        for name, lbls in m.samples
        if name == "nodeproxy_upstream_connect_failures_total" and ("cluster", cluster) in lbls
    }
    return found


async def mesh_scrapes(tmp_path: Path) -> tuple[Scrape, Scrape]:
    """Node a and node b after webserver called auth-api (allowed) and the database
    (denied), and a plaintext client knocked on b's mTLS port."""
    found = _MEMO.get("mesh")
    if isinstance(found, tuple):
        return found
    async with two_node_mesh(tmp_path) as mesh, mesh_client(WEB_IP) as web:
        url = f"http://127.0.0.1:{mesh.a.outbound}/"
        with trio.fail_after(20):
            assert (await web.get(url, headers={"host": "auth-api.shop"})).status_code == 200
            assert (await web.get(url, headers={"host": "database.shop"})).status_code == 403
            async with await trio.open_tcp_stream("127.0.0.1", mesh.b.inbound) as plain:
                await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                while await plain.receive_some(4096):
                    pass
            failures = "nodeproxy_tls_handshake_failures_total"
            await until(lambda: mesh.b.counter(failures, listener="inbound") == 1)
            a = Scrape(await scrape(mesh.a.handle.admin_port))
            b = Scrape(await scrape(mesh.b.handle.admin_port))
    _MEMO["mesh"] = (a, b)
    return a, b


async def test_callers_and_mtls_handshakes_show_in_prometheus(tmp_path: Path) -> None:
    a, b = await mesh_scrapes(tmp_path)
    caller = {"caller_namespace": "shop", "caller_service_account": "webserver"}
    calls = "nodeproxy_caller_requests_total"
    # node a's outbound knows the calling pod from its address (mesh.workloads) ...
    outbound = {"listener": "outbound", **caller}
    assert a.value(calls, **outbound, cluster="auth-api.shop", code_class="2xx") == 1
    assert a.value(calls, **outbound, cluster="database.shop", code_class="4xx") == 1
    # ... node b's inbound from its certificate: the denied tunnel is answered (403) and
    # counted at once; the allowed one is counted when the tunnel closes
    inbound = {"listener": "inbound", **caller}
    assert b.value(calls, **inbound, cluster="database.shop", code_class="4xx") == 1
    handshakes = b.value("nodeproxy_tls_handshakes_total", listener="inbound")
    assert handshakes >= 1  # one per tunnel from a
    assert a.value("nodeproxy_tls_handshakes_total", listener="outbound") == handshakes
    assert b.value("nodeproxy_tls_handshake_failures_total", listener="inbound",
                   reason="not_tls") == 1  # fmt: skip
    assert b.value("nodeproxy_policy_allowed_total", listener="inbound",
                   rule="webserver-to-auth") == 1  # fmt: skip
    assert b.value("nodeproxy_policy_denied_total", listener="inbound", rule="(default)") == 1
    check_documented(a)
    check_documented(b)


async def test_the_grafana_dashboard_queries_only_documented_metrics_a_scrape_has(
    tmp_path: Path,
) -> None:
    r = await resilience()
    a, b = await mesh_scrapes(tmp_path)
    check_dashboard(r.m, a, b)


# -- docs/admin.md and the dashboard against a real scrape ---------------------------


def documented() -> dict[str, set[str]]:
    """Every metric docs/admin.md lists in a table: name -> its label names."""
    out: dict[str, set[str]] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`nodeproxy_[a-z_]+`", cells[0]):
            continue
        label_cell = re.sub(r"\([^)]*\)", "", cells[2])  # drop the values: (`2xx`...)
        out[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", label_cell))
    return out


def check_documented(m: Scrape) -> None:
    docs = documented()
    for name, exposed in m.labels.items():
        assert name in docs, f"{name} is exposed but not in docs/admin.md"
        assert exposed == docs[name], f"{name}: exposed {exposed}, documented {docs[name]}"
    for name in m.types:
        assert name in docs, f"{name} is exposed but not in docs/admin.md"
        assert not m.help[name].startswith("nodeproxy metric"), f"{name} has no HELP text"


def dashboard_exprs() -> list[str]:
    """The PromQL of every panel of the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs
    return exprs


def check_dashboard(*scrapes: Scrape) -> None:
    """Every metric a panel queries is documented and in a real scrape, and every label it
    groups or filters by is one that metric has (else the panel draws one nameless line)."""
    docs = documented()
    exposed = set().union(*(m.sample_names() for m in scrapes))
    labels_of: dict[str, set[str]] = {}
    for m in scrapes:
        for family, found in m.labels.items():
            labels_of.setdefault(family, set()).update(found)
    for expr in dashboard_exprs():
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
        families: set[str] = set()
        for name in re.findall(r"\bnodeproxy_[a-z_]+\b", expr):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family in docs, f"the dashboard queries {name}, not in docs/admin.md"
            assert name in exposed, f"the dashboard queries {name}, not in a real scrape"
            families.add(family)
        have = {"le"}.union(*(labels_of.get(f, set()) for f in families))
        used = {x.strip() for g in re.findall(r"\bby \(([^)]*)\)", expr) for x in g.split(",")}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        assert used <= have, f"{expr}: no label {used - have}"


def test_help_texts_cover_every_name() -> None:
    constants = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    assert constants <= set(HELP), constants - set(HELP)
    assert set(documented()) >= constants, constants - set(documented())


def test_bounded_labels_keep_the_first_values_and_fold_the_rest() -> None:
    bounded = Bounded(2)
    assert [bounded(v) for v in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        OTHER,
        "a",
        OTHER,
        "b",
    ]
    assert SOURCE_CAP == 256


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, ("200", "2xx")), (503, ("503", "5xx")), (0, ("none", "none")), (999, (OTHER, OTHER))],
)
def test_status_labels_are_bounded(status: int, expected: tuple[str, str]) -> None:
    assert code_labels(status) == expected


async def test_callers_past_the_cap_share_one_other_series() -> None:
    stats = Stats()
    accounting = Accounting(stats, "inbound", access_log_enabled=False)
    # A real Downstream (the compiled build checks the type) on a loopback connection.
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    down = Downstream(await listener.accept(), Limits())
    for i in (*range(SOURCE_CAP + 3), 0):  # the first caller again at the end: still its own
        ex = Exchange("inbound", "10.0.0.1:1000", trio.current_time())
        ex.status, ex.cluster = 200, "svc"
        ex.caller = SpiffeId.workload("shop", f"sa-{i}")
        accounting.account(down, ex)
    for closable in (client, down.stream, listener):
        await closable.aclose()
    series = stats.counters[CALLER_REQUESTS]
    assert len(series) == SOURCE_CAP + 1
    base = {"listener": "inbound", "cluster": "svc", "code_class": "2xx"}
    other = labels(**base, caller_namespace=OTHER, caller_service_account=OTHER)
    assert series[other] == 3
    first = labels(**base, caller_namespace="shop", caller_service_account="sa-0")
    assert series[first] == 2
