"""The live dashboard end to end: real traffic through a real proxy, then the admin's
``/dashboard.json`` over HTTP, and the ``/`` page rendered by headless Chromium.

The traffic leaves every state the page must show: a replica ejected by outlier
detection (it answers 500), one failing its active health check (unhealthy), one
removed from discovery while the proxy still remembers it (draining), healthy
ones, and a calling pod (127.0.0.2) throttled by its per-source rate limit while
another (127.0.0.3) is not. Rates are tiny and the ejection long, so every count
is exact without a clock.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import trio

from nodeproxy.admin.server import serve_admin
from nodeproxy.config import load_config_text
from nodeproxy.discovery.snapshot import static_snapshot
from tests.helpers.backends import ProxyHandle, run_proxy
from tests.helpers.replicas import Replica, replicas

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLOODER, POLITE = "127.0.0.2", "127.0.0.3"
# A node name is whatever the API says: the page must show it as text, never as markup.
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


def config_text(good: Replica, bad: Replica, old: Replica, ok: Replica, sick: Replica) -> str:
    return f"""
node_name: node-a
listeners:
  - address: 127.0.0.1:0
    rate_limit: {{per_source: {{requests_per_second: 0.001, burst: 12}}}}
admin: {{address: "127.0.0.1:0"}}
services:
  - name: svc
    lb_policy: round_robin
    outlier_detection: {{consecutive_5xx: 3, base_ejection_time: 300s, interval: 10s,
                         max_ejection_percent: 100}}
    circuit_breaker: {{failure_threshold: 50, open_interval: 5s}}
    endpoints: ["{good.address}", "{bad.address}", "{old.address}"]
  - name: checked
    lb_policy: round_robin
    health_check: {{path: /healthz, interval: 0.05s, timeout: 1s, unhealthy_threshold: 1,
                    healthy_threshold: 1}}
    endpoints: ["{ok.address}", "{sick.address}"]
"""


@dataclass
class Scene:
    proxy: ProxyHandle
    admin_port: int
    good: Replica
    bad: Replica
    old: Replica
    ok: Replica
    sick: Replica

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def client(proxy: ProxyHandle, source: str, host: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(
        transport=transport, base_url=proxy.url, headers={"host": host}, timeout=10
    )


async def wait_unhealthy(proxy: ProxyHandle, replica: Replica) -> None:
    while True:
        state = proxy.runtime.traffic.get("checked")
        if state is not None and state.health is not None:
            eps = [e for e in proxy.runtime.endpoints.current().endpoints("checked")]
            (ep,) = [e for e in eps if e.address == replica.address]
            if state.health.state(ep).value == "unhealthy":
                return
        await trio.sleep(0.02)


@asynccontextmanager
async def scene() -> AsyncIterator[Scene]:
    good, bad, old = Replica("good"), Replica("bad", status=500), Replica("old")
    ok, sick = Replica("ok"), Replica("sick")
    sick.health_status = 503
    async with replicas(good, bad, old, ok, sick):
        config = load_config_text(config_text(good, bad, old, ok, sick))
        async with run_proxy(config) as p, trio.open_nursery() as nursery:
            admin_port = await nursery.start(serve_admin, p.runtime)
            with trio.fail_after(20):
                async with client(p, FLOODER, "svc") as flooder:
                    statuses = [(await flooder.get("/")).status_code for _ in range(15)]
                assert statuses[:12].count(500) == 3  # then bad was ejected
                assert statuses[12:] == [429, 429, 429]  # the source's burst of 12 is spent
                async with client(p, POLITE, "checked") as polite:
                    assert (await polite.get("/")).status_code == 200  # creates the state
                    await wait_unhealthy(p, sick)
                    assert [(await polite.get("/")).status_code for _ in range(4)] == [200] * 4
            # "old" leaves discovery; its pool and counters stay for endpoint_grace (60 s)
            clusters = static_snapshot(config)
            clusters["svc"] = tuple(
                replace(e, node=HOSTILE) for e in clusters["svc"] if e.address != old.address
            )
            p.runtime.endpoints.publish(clusters)
            p.runtime.listeners_ready = True  # serve_listener's app.py would say so
            yield Scene(p, admin_port, good, bad, old, ok, sick)
            nursery.cancel_scope.cancel()


async def test_dashboard_json_after_traffic_shows_states_rates_and_sources() -> None:
    async with scene() as s, httpx.AsyncClient(base_url=s.admin_url, timeout=10) as admin:
        first = await admin.get("/dashboard.json")
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/json"
        d = first.json()
        assert d["rate_window_s"] is None  # no earlier poll to compare with
        second = (await admin.get("/dashboard.json")).json()
        assert second["rate_window_s"] is not None
        assert second["node"] == {**d["node"], "uptime_s": second["node"]["uptime_s"]}
        assert d["node"]["name"] == "node-a"
        assert (d["node"]["ready"], d["node"]["state"]) == (True, "ready")

        by_name = {c["name"]: c for c in d["clusters"]}
        assert set(by_name) == {"svc", "checked"}
        svc = by_name["svc"]
        states = {e["address"]: e["state"] for e in svc["endpoints"]}
        assert {e["node"] for e in svc["endpoints"]} == {HOSTILE, ""}
        assert states == {
            s.good.address: "healthy",
            s.bad.address: "ejected",
            s.old.address: "draining",
        }
        assert svc["endpoint_states"] == {
            "healthy": 1,
            "unhealthy": 0,
            "ejected": 1,
            "draining": 1,
        }
        # the listener's 429s come before routing: they count for the source, not the service
        assert (svc["requests"], svc["errors"]) == (12, 3)
        assert svc["breaker"]["state"] == "closed"
        assert svc["ejections"] == 1
        assert svc["latency"]["count"] == 12
        assert svc["latency"]["p99_ms"] > 0
        eps = {e["address"]: e for e in svc["endpoints"]}
        assert (eps[s.bad.address]["requests"], eps[s.bad.address]["errors"]) == (3, 3)
        assert eps[s.bad.address]["times_ejected"] == 1
        assert 290 < eps[s.bad.address]["ejected_for_s"] <= 300
        assert eps[s.old.address]["requests"] == s.old.requests > 0
        checked = {e["address"]: e["state"] for e in by_name["checked"]["endpoints"]}
        assert checked == {s.ok.address: "healthy", s.sick.address: "unhealthy"}

        sources = {r["source"]: r for r in d["sources"]["rows"]}
        assert set(sources) == {FLOODER, POLITE}
        flood = sources[FLOODER]
        assert (flood["requests"], flood["rate_limited"], flood["throttled"]) == (15, 3, 3)
        assert (flood["errors"], flood["in_flight"]) == (3, 0)
        assert (sources[POLITE]["requests"], sources[POLITE]["throttled"]) == (5, 0)

        # the admin's Host check holds for the page and its data (DNS rebinding)
        for path in ("/", "/dashboard.json"):
            refused = await admin.get(path, headers={"host": "evil.example"})
            assert refused.status_code == 421
            assert refused.headers["x-nodeproxy-error"] == "admin_host_not_allowed"


class Texts(html.parser.HTMLParser):
    """Every ``data-*`` attribute set of the rendered DOM, and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.text: list[str] = []
        self.error_hidden = False
        self.tags: set[str] = set()
        self.title = ""
        self._title = False
        self._code = False  # inside <script> or <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k.removeprefix("data-"): v or "" for k, v in attrs if k.startswith("data-")}
        if data:
            self.rows.append(data)
        if ("id", "error") in attrs:
            self.error_hidden = any(k == "hidden" for k, _ in attrs)
        self._code = tag in ("script", "style")
        self.tags.add(tag)
        self._title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._code = self._title = False

    def handle_data(self, data: str) -> None:
        if self._title:
            self.title += data
        if not self._code:
            self.text.append(data)


async def trickle(proxy: ProxyHandle) -> None:
    """Requests from another pod until cancelled (throttled after its burst of 12)."""
    async with client(proxy, "127.0.0.4", "svc") as c:
        while True:
            await c.get("/")
            await trio.sleep(0.05)


async def chromium(tmp_path: Path, url: str, *args: str) -> bytes:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
        *args,
        url,
    ]
    with trio.fail_after(90):  # a cold start on a loaded machine takes seconds
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return bytes(done.stdout)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")
async def test_dashboard_renders_in_headless_chromium(tmp_path: Path) -> None:
    async with scene() as s:
        dom = (await chromium(tmp_path, s.admin_url + "/", "--dump-dom")).decode()
        parsed = Texts()
        parsed.feed(dom)
        body = next(r for r in parsed.rows if "rendered" in r)
        assert int(body["rendered"]) >= 1, dom[:2000]
        clusters = {r["cluster"] for r in parsed.rows if "cluster" in r}
        assert clusters == {"svc", "checked"}
        endpoints = {r["endpoint"]: r["state"] for r in parsed.rows if "endpoint" in r}
        assert endpoints == {
            s.good.address: "healthy",
            s.bad.address: "ejected",
            s.old.address: "draining",
            s.ok.address: "healthy",
            s.sick.address: "unhealthy",
        }
        sources = {r["source"]: r for r in parsed.rows if "source" in r}
        assert sources[FLOODER]["throttled"] == "3"
        assert sources[POLITE]["throttled"] == "0"
        text = " ".join(" ".join(parsed.text).split())
        for shown in ("ejected", "unhealthy", "draining", "Calling sources", "/stats/prometheus"):
            assert shown in text
        assert re.search(r"\b12 requests\b", text), text  # svc's count, as a KPI
        assert parsed.error_hidden, text  # no fetch error shown
        assert HOSTILE in text  # shown as text...
        assert "img" not in parsed.tags  # ...not parsed as markup
        assert parsed.title == "nodeproxy admin"

        shot = tmp_path / "dashboard.png"
        snapshot = dict(s.proxy.runtime.endpoints.current().clusters)  # a kinder node name
        snapshot["svc"] = tuple(replace(e, node="node-b") for e in snapshot["svc"])
        s.proxy.runtime.endpoints.publish(snapshot)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, s.proxy)  # some rates to show in the picture
            await chromium(tmp_path, s.admin_url + "/", f"--screenshot={shot}")
            nursery.cancel_scope.cancel()
        png = shot.read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(png) < 300_000
        if target := os.environ.get("NODEPROXY_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(shot, target)  # docs/admin-dashboard.png (docs/admin.md)
