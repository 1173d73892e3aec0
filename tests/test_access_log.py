"""The access line of a real ``nodeproxy run``: one JSON line per request, batched, never lost.

In JSON mode the access line skips structlog's chain and is written in
batches (``nodeproxy/access_log.py``); these tests hold it to what an
operator's log shipper sees: every request's line arrives, with the same
fields as before, within the flush interval while serving, and all of them
by the time a drain ends the process.
"""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import httpx

from nodeproxy.access_log import AccessWriter
from tests.helpers.backends import backend
from tests.helpers.proc import running_nodeproxy

FIELDS = {
    "listener", "method", "authority", "path", "protocol", "status", "duration_ms", "upstream",
    "cluster", "bytes_received", "bytes_sent", "request_id", "cause", "source", "event",
    "logger", "level", "timestamp",
}  # fmt: skip


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0'}\n"
        "log: {format: json}\nlimits: {drain_timeout: 2s}\n"
        f"services: [{{name: svc, endpoints: [{{address: '127.0.0.1:{port}'}}]}}]\n"
    )
    return path


async def test_every_request_gets_its_line_and_none_is_lost_at_drain(tmp_path: Path) -> None:
    async with (
        backend() as b,
        running_nodeproxy("run", "--config", str(_config(tmp_path, b.port))) as p,
    ):
        url = f"http://127.0.0.1:{p.listener_ports['outbound']}"
        async with httpx.AsyncClient(trust_env=False) as client:
            for i in range(150):  # more than one batch, and a partial last one
                r = await client.get(f"{url}/n/{i}", headers={"host": "svc"})
                assert r.status_code == 200
        first = await p.read_event("access")  # written while serving: the flusher's period
        p.signal(signal.SIGTERM)
        assert await p.wait_exit() == 0
    for raw in p._buffer.splitlines():
        if raw.strip():
            p.lines.append(json.loads(raw))
    access = [line for line in p.lines if line.get("event") == "access"]
    assert [line["path"] for line in access] == [f"/n/{i}" for i in range(150)]
    assert set(first) == FIELDS
    assert first["status"] == 200
    assert first["logger"] == "nodeproxy.access"
    assert first["timestamp"].endswith("Z")


def test_the_writer_batches_and_flushes() -> None:
    out = io.StringIO()
    writer = AccessWriter(out, max_lines=3)
    writer.emit({"path": "/a"})
    writer.emit({"path": "/b"})
    assert out.getvalue() == ""  # batched
    writer.emit({"path": "/c"})  # the third fills the batch: one write
    assert [json.loads(line)["path"] for line in out.getvalue().splitlines()] == ["/a", "/b", "/c"]
    writer.emit({"path": "/d"})
    writer.flush()
    assert json.loads(out.getvalue().splitlines()[-1])["path"] == "/d"


def test_the_rendered_line_is_the_structlog_fields_as_json() -> None:
    """The fast renderer and the structlog path carry the same fields, escaped as JSON."""
    from nodeproxy.access_log import access_fields, render
    from nodeproxy.server.downstream import Exchange

    ex = Exchange(listener="outbound", source="127.0.0.1:5555", started=0.0)
    ex.method, ex.authority, ex.status = "GET", 'we"ird\\host', 200
    ex.path = '/ünï\tcode"\x01\u2028'  # quotes, control characters, non-ASCII
    ex.request_id, ex.cluster = "abc", "svc"
    plain = json.loads(render(ex, 0.0012345, 10, 20))
    assert plain.pop("timestamp").endswith("Z")
    assert plain == dict(
        access_fields(ex, 0.0012345, 10, 20),
        event="access",
        logger="nodeproxy.access",
        level="info",
    )
    assert plain["path"] == ex.path
    assert plain["upstream"] is None
    assert plain["duration_ms"] == 1.234
    ex.upgrade, ex.client, ex.peer_identity = "websocket", "10.0.0.9", "spiffe://td/ns/a/sa/b"
    ex.policy_rule = "allow-b"
    full = json.loads(render(ex, 0.5, 0, 0))
    assert {k: full[k] for k in ("upgrade", "client", "peer_identity", "policy_rule")} == {
        "upgrade": "websocket",
        "client": "10.0.0.9",
        "peer_identity": "spiffe://td/ns/a/sa/b",
        "policy_rule": "allow-b",
    }
    assert set(full) - {"timestamp", "event", "logger", "level"} == set(
        access_fields(ex, 0.5, 0, 0)
    )
