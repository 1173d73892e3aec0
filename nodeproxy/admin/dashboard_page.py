"""The admin's ``/`` page: a live dashboard, one self-contained HTML document.

Why this shape: the page is served by the proxy itself on a node where
nothing else may be reachable, so it has no build step and fetches nothing
from elsewhere: inline CSS and vanilla JS that polls ``/dashboard.json``
(``dashboard.py``) every 2 seconds and redraws. The browser is held to that
by a Content-Security-Policy allowing only this page's own script and style
(by hash) and requests to the admin's own origin. Names shown come from
Kubernetes (services, labels, nodes) and are untrusted: the script builds
every element with ``createElement`` and sets text with ``textContent``
(``append`` of strings), never ``innerHTML``. The nav bar is rendered here,
escaped, so every other admin endpoint stays one click away, also without JS.
Links and the fetch are relative, so the page works behind a path prefix too
(``kubectl proxy``'s ``.../pods/<pod>:9901/proxy/``).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable

POLL_MS = 2000

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;
  align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
nav a{color:#cfe0ff;margin-right:12px;text-decoration:none}
nav a:hover{text-decoration:underline}
nav code{color:#99a;margin-right:12px}
main{padding:12px 18px}
.status{color:#556;margin:4px 0 12px}
.error{background:#fde2e1;color:#8a1c17;padding:6px 10px;border-radius:4px}
section.cluster,section.sources{background:#fff;border:1px solid #dde2ea;border-radius:6px;
  margin:0 0 14px;padding:10px 14px}
h2{font-size:16px;margin:0 0 6px;display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
h2 small{color:#667;font-weight:normal}
.kpis{display:flex;gap:22px;flex-wrap:wrap;margin:4px 0 8px}
.kpi b{display:block;font-size:17px}
.kpi span{color:#667;font-size:12px}
table{border-collapse:collapse;width:100%}
th,td{text-align:right;padding:3px 8px;border-bottom:1px solid #eef0f4;white-space:nowrap}
th{color:#556;font-weight:600;font-size:12px}
th:first-child,td:first-child,td.text,th.text{text-align:left}
td.text{max-width:24em;overflow:hidden;text-overflow:ellipsis}
section{overflow-x:auto}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600}
.healthy,.closed,.ready{background:#dcf3e2;color:#17642e}
.ejected,.open,.not-ready{background:#fde2e1;color:#8a1c17}
.unhealthy,.half_open{background:#fff0d5;color:#7a4b00}
.draining{background:#e3e8f3;color:#344a74}
.hot{color:#8a1c17;font-weight:600}
.idle{color:#667}
"""

SCRIPT = """
"use strict";
const POLL_MS = @POLL_MS@;
function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const k of kids) e.append(k instanceof Node ? k : (k == null ? "" : String(k)));
  return e;
}
function num(x, digits) { return x == null ? "\\u2013" : Number(x).toFixed(digits); }
function rate(x) { return x == null ? "\\u2013" : num(x, x < 10 ? 2 : 1) + "/s"; }
function pct(x) { return x == null ? "\\u2013" : num(x * 100, x < 0.1 ? 2 : 1) + "%"; }
function ms(x) { return x == null ? "\\u2013" : num(x, x < 10 ? 2 : 1) + " ms"; }
function badge(state, label) {
  return el("span", "badge " + state, label || state.replace("_", "-"));
}
function kpi(label, value, hot) { return el("div", "kpi", el("b", hot ? "hot" : "", value),
  el("span", "", label)); }
function row(cells, attrs) {
  const tr = el("tr", "");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute("data-" + k, String(v));
  for (const c of cells) tr.append(c instanceof Node && c.tagName === "TD" ? c : el("td", "", c));
  return tr;
}
function table(heads, rows, textCols) {
  const t = el("table", "");
  const h = el("tr", "");
  heads.forEach((x, i) => h.append(el("th", i < textCols ? "text" : "", x)));
  t.append(el("thead", "", h), el("tbody", "", ...rows));
  return t;
}
function cluster(c) {
  const s = el("section", "cluster");
  s.setAttribute("data-cluster", c.name);
  const title = el("h2", "", el("span", "name", c.name));
  if (c.namespace) title.append(el("small", "", "namespace " + c.namespace));
  if (c.lb_policy) title.append(el("small", "", c.lb_policy));
  title.append(c.breaker ? badge(c.breaker.state, "breaker " + c.breaker.state.replace("_", "-"))
    : el("small", "", "no breaker"));
  const st = c.endpoint_states;
  s.append(title, el("div", "kpis",
    kpi("requests", c.requests), kpi("req/s", rate(c.rps)),
    kpi("errors (5xx)", c.errors, c.errors > 0), kpi("error rate", pct(c.error_ratio),
      c.error_ratio > 0),
    kpi("p50 (" + c.latency.over + ")", ms(c.latency.p50_ms)),
    kpi("p99 (" + c.latency.over + ")", ms(c.latency.p99_ms)),
    kpi("ejections", c.ejections, c.ejections > 0),
    kpi("endpoints", st.healthy + " healthy, " + st.ejected + " ejected, " + st.unhealthy +
      " unhealthy, " + st.draining + " draining", st.ejected + st.unhealthy > 0)));
  if (c.breaker && c.breaker.state !== "closed")
    s.append(el("p", "hot", "breaker " + c.breaker.state + ": retry in " +
      num(c.breaker.retry_after, 1) + " s, " + c.breaker.rejected + " rejected"));
  const rows = c.endpoints.map(e => row([
    el("td", "text", e.address), el("td", "text", e.node || ""),
    el("td", "text", badge(e.state)), e.in_flight, rate(e.rps), pct(e.error_ratio),
    e.requests, e.errors, ms(e.ewma_ms), e.connections.active + " / " + e.connections.idle,
    e.ejected_for_s == null ? (e.times_ejected ? e.times_ejected + "x" : "") :
      "for " + num(e.ejected_for_s, 1) + " s (" + e.times_ejected + "x)",
  ], {endpoint: e.address, state: e.state}));
  s.append(table(["endpoint", "node", "state", "in flight", "req/s", "error rate",
    "requests", "errors", "ewma", "conns act/idle", "ejected"], rows, 3));
  return s;
}
function sources(src) {
  const s = el("section", "sources", el("h2", "", "Calling sources"));
  if (src == null) {
    s.append(el("p", "idle", "no per-source data"));
    return s;
  }
  const rows = src.rows.map(r => row([
    el("td", "text", r.source), r.in_flight, r.requests, rate(r.rps), r.errors,
    r.rate_limited, r.fairness_rejected, r.queued,
    el("td", r.throttled > 0 ? "hot" : "", r.throttled),
    rate(r.throttled_per_s), num(r.idle_s, 0) + " s",
  ], {source: r.source, throttled: r.throttled, "in-flight": r.in_flight}));
  s.append(table(["source", "in flight", "requests", "req/s", "errors (5xx)", "rate limited",
    "fairness refused", "queued", "throttled", "throttled/s", "last seen"], rows, 1));
  if (src.count > src.rows.length)
    s.append(el("p", "idle", (src.count - src.rows.length) + " more sources not shown"));
  return s;
}
function render(d) {
  const n = d.node;
  document.getElementById("node").replaceChildren(el("span", "", n.name || "this node"), " ",
    badge(n.ready ? "ready" : "not-ready"), " ", el("small", "", n.ready ? "" : n.state));
  document.getElementById("status").replaceChildren(
    "updated " + new Date().toLocaleTimeString() + " \\u00b7 rates over " +
    (d.rate_window_s == null ? "\\u2013 (next poll)" : num(d.rate_window_s, 1) + " s") +
    " \\u00b7 endpoint snapshot " + d.snapshot_version);
  const main = [];
  if (!d.clusters.length) main.push(el("p", "idle", "No service has had traffic yet."));
  for (const c of d.clusters) main.push(cluster(c));
  const idle = d.idle_clusters;
  if (idle.count) main.push(el("p", "idle", idle.count + " service(s) with no traffic from " +
    "this node: " + idle.names.join(", ") + (idle.count > idle.names.length ? ", ..." : "")));
  main.push(sources(d.sources));
  document.getElementById("dashboard").replaceChildren(...main);
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}
async function poll() {
  const err = document.getElementById("error");
  try {
    const r = await fetch("dashboard.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status + " " + (await r.text()).slice(0, 200));
    render(await r.json());
    err.hidden = true;
  } catch (e) {
    err.textContent = "dashboard.json: " + e.message;
    err.hidden = false;
  }
  setTimeout(poll, document.hidden ? POLL_MS * 5 : POLL_MS);
}
poll();
""".replace("@POLL_MS@", str(POLL_MS))


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def page(nav: Iterable[tuple[str, str, str]]) -> str:
    """The dashboard document; ``nav`` is ``(method, path, description)`` per admin route."""
    links = []
    for method, path, doc in nav:
        p, d = html.escape(path), html.escape(doc)
        if method == "GET":  # relative: the page also works behind a path prefix (kubectl proxy)
            links.append(f'<a href=".{p}" title="{d}">{p}</a>')
        else:
            links.append(f'<code title="{d}">{html.escape(method)} {p}</code>')
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        "<title>nodeproxy admin</title><link rel='icon' href='data:,'>"
        f"<style>{STYLE}</style></head>\n<body>\n<header><h1>nodeproxy</h1>"
        "<div id='node'></div>\n<nav>" + "\n".join(links) + "</nav></header>\n"
        "<main><p id='status' class='status'>loading /dashboard.json ...</p>"
        "<p id='error' class='error' hidden></p>\n"
        "<noscript><p>The live dashboard needs JavaScript; the links above do not.</p>"
        "</noscript>\n<div id='dashboard'></div></main>\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )
