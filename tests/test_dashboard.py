"""The dashboard's pure parts: the per-source table, the rate history, the builder fed
plain data, and the page's safety properties (CSP hash, no HTML from data)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest

from nodeproxy.admin import dashboard_page
from nodeproxy.admin.dashboard import build
from nodeproxy.admin.handlers import ROUTES, AdminContext, handle
from nodeproxy.admin.rates import History, Sample
from nodeproxy.config.model import EndpointConfig
from nodeproxy.stats import names as s
from nodeproxy.stats.prometheus import stats_families
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.traffic.sources import Sources
from nodeproxy.workers.merge import merge_sources
from tests.test_admin import make_runtime

# -- the per-source table -------------------------------------------------------


def test_sources_count_in_flight_answers_and_throttling() -> None:
    src = Sources()
    first = src.start("10.0.0.1", 1.0)
    second = src.start("10.0.0.1", 1.0)
    assert first is second
    src.end(first)
    src.answered("10.0.0.1", 200, None, 2.0)
    src.answered("10.0.0.1", 429, "rate_limited", 2.0)
    src.answered("10.0.0.1", 503, "source_overloaded", 2.0)
    src.answered("10.0.0.1", 502, "connection_failure", 3.0)
    row = src.get("10.0.0.1")
    assert row is not None
    assert (row.in_flight, row.requests, row.errors) == (1, 4, 2)
    assert (row.rate_limited, row.fairness_rejected, row.throttled) == (1, 1, 2)
    assert row.last_seen == 3.0
    src.end(second)
    assert row.in_flight == 0
    assert src.get("10.9.9.9") is None


def test_sources_stay_bounded_and_forget_idle_ones_first() -> None:
    src = Sources(max_sources=3)
    busy = src.start("busy", 0.0)
    for name in ("a", "b"):
        src.answered(name, 200, None, 1.0)
    src.answered("c", 200, None, 2.0)  # over the cap: "a", the oldest idle one, goes
    assert [name for name, _ in src.items()] == ["busy", "b", "c"]
    assert src.forgotten == 1
    for name in ("d", "e"):
        src.start(name, 3.0)
    assert [name for name, _ in src.items()] == ["busy", "d", "e"]  # busy stays
    src.start("f", 4.0)  # every row busy: the least recently seen goes
    assert [name for name, _ in src.items()] == ["d", "e", "f"]
    src.end(busy)  # its late end touches only the forgotten row
    assert [c.in_flight for _, c in src.items()] == [1, 1, 1]
    assert len(src) == 3
    rows = src.items()
    rows[0][1].in_flight = 99  # a copy
    assert src.get("d").in_flight == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="max_sources"):
        Sources(max_sources=0)


# -- the rate history ------------------------------------------------------------


def sample(at: float, **counters: float) -> Sample:
    return Sample(at, {(k,): v for k, v in counters.items()}, {})


def test_history_compares_with_a_sample_a_window_old_and_stays_bounded() -> None:
    h = History(window=10.0, min_spacing=1.0, max_samples=8)
    assert h.advance(sample(0.0)) is None  # nothing earlier
    assert h.advance(sample(0.0)) is None  # the same instant: no interval to divide by
    assert len(h) == 1  # and not kept twice
    bases = [h.advance(sample(t)) for t in (0.5, 2.0, 4.0, 9.0, 11.0, 12.5, 30.0)]
    assert [b.at if b else None for b in bases] == [0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 12.5]
    assert len(h) == 2  # 12.5 (a window before 30) and 30
    for t in range(31, 60):
        h.advance(sample(float(t)))
    assert len(h) <= 8


# -- the builder --------------------------------------------------------------------


def endpoint_view(address: str, state: str, traffic: dict[str, Any] | None = None) -> Any:
    return {"address": address, "node": "n1", "labels": {"v": "1"}, "state": state,
            "traffic": traffic}  # fmt: skip


def traffic(ejected_until: float | None = None, active: int = 0) -> dict[str, Any]:
    outlier = {"state": "ejected" if ejected_until else "active", "ejected_until": ejected_until,
               "times_ejected": 1 if ejected_until else 0}  # fmt: skip
    return {"ewma_ms": 2.5, "active_requests": active, "outlier": outlier, "health": None}


def cluster_traffic(state: str = "closed", ejections: int = 0) -> dict[str, Any]:
    breaker = {"state": state, "retry_after": 0.0, "trips": 1, "rejected": 0}
    return {"breaker": breaker, "ejections": ejections}


def view() -> dict[str, Any]:
    return {
        "snapshot_version": 7,
        "clusters": [
            {
                "name": "api",
                "settings": {"namespace": "shop", "lb_policy": "p2c_ewma"},
                "traffic": cluster_traffic(ejections=1),
                "endpoints": [
                    endpoint_view("10.0.0.1:80", "active", traffic(active=2)),
                    endpoint_view("10.0.0.2:80", "ejected", traffic(ejected_until=130.0)),
                    endpoint_view("10.0.0.3:80", "unhealthy", traffic()),
                ],
            },
            {"name": "quiet", "settings": None, "traffic": None, "endpoints": []},
        ],
    }


def traffic_stats(ok: int, failed: int, slow: int = 0) -> Stats:
    st = Stats()
    cl = {"cluster": "api"}
    st.inc(s.REQUESTS, labels(listener="out", code_class="2xx", **cl), ok)
    st.inc(s.REQUESTS, labels(listener="out", code_class="5xx", **cl), failed)
    st.inc(s.UPSTREAM_REQUESTS, labels(endpoint="10.0.0.1:80", code_class="2xx", **cl), ok)
    st.inc(s.UPSTREAM_REQUESTS, labels(endpoint="10.0.0.2:80", code_class="5xx", **cl), failed)
    st.inc(s.UPSTREAM_CONNECT_FAILURES, labels(endpoint="10.0.0.2:80", **cl), 1)
    st.inc(s.UPSTREAM_REQUESTS, labels(endpoint="10.0.0.9:80", code_class="2xx", **cl), 4)
    st.gauge_set(s.POOL_CONNECTIONS, labels(endpoint="10.0.0.9:80", state="active", **cl), 1)
    for _ in range(ok + failed - slow):
        st.observe(s.REQUEST_DURATION_MS, labels(route="api", **cl), 3.0)
    for _ in range(slow):
        st.observe(s.REQUEST_DURATION_MS, labels(route="api-slow", **cl), 700.0)
    return st


def test_build_joins_states_counts_and_rates_over_the_window() -> None:
    h = History(window=10.0)
    src = Sources()
    src.answered("10.1.0.5", 429, "rate_limited", 95.0)
    node = {"name": "node-a", "ready": True}
    first = build(view(), stats_families(traffic_stats(100, 10)), src.items(), node, 100.0, h)
    assert first["rate_window_s"] is None
    (api,) = first["clusters"]
    assert (api["rps"], api["error_ratio"]) == (None, None)
    assert api["latency"] == {"p50_ms": 3.75, "p99_ms": 4.975, "count": 110, "over": "lifetime"}

    for _ in range(4):
        src.answered("10.1.0.5", 429, "rate_limited", 108.0)
    src.start("10.1.0.6", 109.0)
    later = traffic_stats(200, 30, slow=20)
    d = build(view(), stats_families(later), src.items(), node, 110.0, h)
    assert json.loads(json.dumps(d)) == d  # JSON-able as it is
    assert (d["node"], d["now"], d["rate_window_s"], d["snapshot_version"]) == (
        node, 110.0, 10.0, 7
    )  # fmt: skip
    (api,) = d["clusters"]
    assert (api["name"], api["namespace"], api["lb_policy"]) == ("api", "shop", "p2c_ewma")
    assert (api["requests"], api["errors"], api["ejections"]) == (230, 30, 1)
    assert (api["rps"], api["error_ratio"]) == (12.0, 0.1667)  # 120 more, 20 of them 5xx
    assert api["latency"]["over"] == "window"  # the 120 in the window: 20 slow ones
    assert api["latency"]["count"] == 120
    assert 500 < api["latency"]["p99_ms"] <= 1000
    assert api["breaker"]["state"] == "closed"
    eps = {e["address"]: e for e in api["endpoints"]}
    assert {a: e["state"] for a, e in eps.items()} == {
        "10.0.0.1:80": "healthy",
        "10.0.0.2:80": "ejected",
        "10.0.0.3:80": "unhealthy",
        "10.0.0.9:80": "draining",  # counted, not in the snapshot any more
    }
    assert api["endpoint_states"] == {"healthy": 1, "unhealthy": 1, "ejected": 1, "draining": 1}
    ejected = eps["10.0.0.2:80"]
    assert (ejected["requests"], ejected["errors"]) == (31, 31)  # 30 x 5xx + a connect failure
    assert (ejected["ejected_for_s"], ejected["times_ejected"]) == (20.0, 1)
    assert (ejected["rps"], ejected["error_ratio"]) == (2.0, 1.0)
    healthy = eps["10.0.0.1:80"]
    assert (healthy["in_flight"], healthy["ewma_ms"], healthy["rps"]) == (2, 2.5, 10.0)
    assert eps["10.0.0.9:80"]["connections"] == {"active": 1, "idle": 0}
    assert d["idle_clusters"] == {"count": 1, "names": ["quiet"]}

    assert d["sources"]["count"] == 2
    busy, throttled = d["sources"]["rows"]  # in flight first
    assert (busy["source"], busy["in_flight"]) == ("10.1.0.6", 1)
    assert throttled["source"] == "10.1.0.5"
    assert (throttled["throttled"], throttled["rate_limited"], throttled["requests"]) == (5, 5, 5)
    assert (throttled["throttled_per_s"], throttled["idle_s"]) == (0.4, 2.0)


def test_build_counters_going_back_rate_as_zero_and_workers_merge() -> None:
    h = History(window=10.0)
    build(view(), stats_families(traffic_stats(100, 10)), [], {}, 0.0, h)
    merged = view()
    api = merged["clusters"][0]
    api["traffic"] = {"workers": {"0": cluster_traffic(ejections=2),
                                  "1": cluster_traffic("open", 3)}}  # fmt: skip
    api["endpoints"][1]["traffic"]["workers"] = {}  # a worker's clock: no ejected_for_s
    d = build(merged, stats_families(traffic_stats(50, 5)), None, {}, 5.0, h)
    (c,) = d["clusters"]
    assert (c["rps"], c["error_ratio"]) == (0.0, None)  # series restarted: no negative rate
    assert c["breaker"]["state"] == "open"  # the worst worker's
    assert (c["breaker"]["trips"], c["ejections"]) == (2, 5)
    assert c["endpoints"][1]["ejected_for_s"] is None
    assert d["sources"] is None  # no table given: shown as such


# -- the page and its routes ----------------------------------------------------


def test_page_is_self_contained_and_held_by_its_csp() -> None:
    rt = make_runtime()
    resp = handle(AdminContext(rt, 0.0), "GET", "/", {}, 1.0)
    headers = dict(resp.headers)
    assert resp.status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    page = resp.text
    for tag, body in re.findall(r"<(script|style)>(.*?)</\1>", page, re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp, tag  # the inline code the browser may run
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing from elsewhere
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in dashboard_page.SCRIPT
    for path, route in ROUTES.items():  # the nav bar keeps every endpoint one click away
        assert path in page, route.doc


def test_nav_is_escaped() -> None:
    page = dashboard_page.page([("GET", "/a<b>", 'say "hi"'), ("POST", "/x&y", "")])
    assert '<a href="./a&lt;b&gt;" title="say &quot;hi&quot;">/a&lt;b&gt;</a>' in page
    assert "POST /x&amp;y" in page


def test_dashboard_json_route_answers_from_the_runtime() -> None:
    rt = make_runtime()
    rt.stats.inc(s.REQUESTS, labels(listener="o", cluster="bdgreeter", code_class="2xx"), 3)
    rt.sources.answered("127.0.0.9", 200, None, 41.0)
    snapshot = dict(rt.endpoints.current().clusters)
    for name in ("zz.discovered", "aa.discovered"):  # known, never called from this node
        snapshot[name] = (EndpointConfig("10.0.0.1", 80),)
    rt.endpoints.publish(snapshot)
    ctx = AdminContext(rt, started_at=40.0)
    resp = handle(ctx, "GET", "/dashboard.json", {}, 42.0)
    assert resp.status == 200
    d = json.loads(resp.body)
    assert d["node"] == {"name": "", "ready": True, "state": "ready", "draining": False,
                         "uptime_s": 2.0}  # fmt: skip
    (c,) = d["clusters"]
    assert (c["name"], c["requests"]) == ("bdgreeter", 3)
    assert [e["state"] for e in c["endpoints"]] == ["healthy", "healthy"]
    assert d["sources"]["rows"][0]["source"] == "127.0.0.9"
    assert d["idle_clusters"] == {"count": 2, "names": ["aa.discovered", "zz.discovered"]}
    assert handle(ctx, "HEAD", "/dashboard.json", {}, 43.0).body == b""
    again = json.loads(handle(ctx, "GET", "/dashboard.json", {}, 45.0).body)
    assert again["rate_window_s"] == 3.0  # from the first poll's sample


def test_workers_source_tables_are_summed() -> None:
    src = Sources()
    src.start("10.0.0.1", 95.0)
    src.answered("10.0.0.1", 429, "rate_limited", 95.0)
    src.waited("10.0.0.1")
    src.waited("10.9.9.9")  # unknown (forgotten meanwhile): ignored
    one = [*src.wire_rows(now=100.0), ("10.0.0.2", 0, 3, 0, 0, 0, 0, 30.0)]
    assert one[0] == ("10.0.0.1", 1, 1, 0, 1, 0, 1, 5.0)
    two = [("10.0.0.1", 2, 14, 1, 1, 4, 2, 1.0)]
    merged = dict(merge_sources([one, two], now=100.0))
    a = merged["10.0.0.1"]
    assert (a.in_flight, a.requests, a.errors, a.rate_limited, a.fairness_rejected) == (
        3, 15, 1, 2, 4
    )  # fmt: skip
    assert a.queued == 3
    assert (a.throttled, a.last_seen) == (6, 99.0)
    assert merged["10.0.0.2"].last_seen == 70.0
