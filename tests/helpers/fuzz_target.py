"""What the data-path fuzz shoots at: `nodeproxy run` in front of a strict h11 backend.

The proxy is the real command in its own process, so a crash, a leaked file
descriptor or a growing heap is the process's own, measured from /proc. Its
JSON log (stdout) is copied to a file as it comes (a full pipe would stall the
proxy) and its stderr goes to another file; both are read after the run.
Its timeouts are short (1 s header read, idle and upstream idle) so that the
connections a hostile client leaves behind are gone soon after the run.

The backend is h11, the strictest parser at hand, on the test's own trio loop:
200 with a small body to anything it parses, a byte echo after a 101 (/ws with
an upgrade) or a 2xx to CONNECT, and a count of the forwarded requests it
refused to parse (it then closes without answering, which the proxy reports
as 502 ``upstream_reset``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import trio
from h11._state import MIGHT_SWITCH_PROTOCOL

BODY = b'{"ok": true}'
CONFIG = """
listeners: [{{name: outbound, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
log: {{format: json, level: info, access_log: true}}
limits: {{header_read_timeout: 1s, downstream_idle_timeout: 1s, drain_timeout: 1s}}
services:
  - name: fuzz
    response_timeout: 5s
    idle_timeout: 1s
    endpoints: ["127.0.0.1:{port}"]
"""


@dataclass
class StrictBackend:
    """h11 on loopback: 200 to what it parses, a tunnel after 101 or CONNECT."""

    refused: int = 0  # connections closed on a request h11 could not parse
    aborted: int = 0  # ... that the proxy closed in the middle of a request (client gone)
    requests: list[h11.Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the backend's own failures: test bugs

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        data = b"-"
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(data := await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    self.requests.append(request := event)
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    if not await self._answer(stream, conn, request):
                        return
                elif not isinstance(event, h11.Data):
                    return  # ConnectionClosed, or PAUSED after a close-delimited answer
        except h11.RemoteProtocolError:
            if data:
                self.refused += 1
            else:
                self.aborted += 1
        except trio.BrokenResourceError:
            pass
        except h11.LocalProtocolError as exc:
            self.errors.append(f"backend: {exc!r} answering {request!r}")
        finally:
            stream.socket.close()

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
    ) -> bool:
        head: h11.Response | h11.InformationalResponse
        upgrade = any(name == b"upgrade" for name, _ in request.headers)  # h11's proposal
        if (
            request.target.endswith(b"/ws")
            and upgrade
            and conn.their_state is MIGHT_SWITCH_PROTOCOL
        ):
            ws = [("upgrade", "websocket"), ("connection", "upgrade")]
            head = h11.InformationalResponse(status_code=101, headers=ws)
        else:
            head = h11.Response(status_code=200, headers=[("content-length", str(len(BODY)))])
        out = conn.send(head) or b""
        if conn.our_state is h11.SWITCHED_PROTOCOL:  # a 101, or a 2xx to CONNECT: echo
            await stream.send_all(out)
            data = conn.trailing_data[0]
            while True:
                if data:
                    await stream.send_all(b"echo:" + data)
                if not (data := await stream.receive_some(65536)):
                    return False
        if request.method != b"HEAD":
            out += conn.send(h11.Data(data=BODY)) or b""
        await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True


@dataclass
class Target:
    process: trio.Process
    backend: StrictBackend
    log: Path
    stderr: Path
    port: int = 0
    admin: int = 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def log_problems(self) -> list[str]:
        """Log lines that are not JSON, say error or carry an exception; a stderr traceback."""
        bad = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                bad.append(line)
                continue
            if event.get("level") in ("error", "critical") or "exception" in event:
                bad.append(line)
        stderr = self.stderr.read_text(errors="replace")
        return bad + ([f"stderr: {stderr[-3000:]}"] if "Traceback" in stderr else [])


@asynccontextmanager
async def fuzz_target(tmp: Path) -> AsyncIterator[Target]:
    """The backend and `nodeproxy run` in front of it, until the block ends."""
    backend = StrictBackend()
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        config = tmp / "nodeproxy.yaml"
        config.write_text(CONFIG.format(port=listeners[0].socket.getsockname()[1]))
        with (tmp / "stderr.txt").open("wb") as err:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "nodeproxy", "run", "--config", str(config)],
                stdout=-1,  # subprocess.PIPE
                stdin=-3,  # subprocess.DEVNULL
                stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        target = Target(process, backend, tmp / "nodeproxy.log", tmp / "stderr.txt")
        try:
            started, copied = trio.Event(), trio.Event()
            nursery.start_soon(_copy_log, target, started, copied)
            with trio.fail_after(30):
                await started.wait()
            yield target
            process.terminate()
            with trio.fail_after(10):
                await process.wait()
                await copied.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()


async def _copy_log(target: Target, started: trio.Event, copied: trio.Event) -> None:
    """Copy the proxy's stdout to ``target.log``; read its ports from ``started``."""
    stdout = target.process.stdout
    assert stdout is not None
    buffer = b""
    with target.log.open("wb") as out:
        while chunk := await stdout.receive_some(65536):
            out.write(chunk)
            out.flush()
            buffer += chunk
            while not started.is_set() and b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                if b'"started"' in line and (event := json.loads(line))["event"] == "started":
                    target.port = int(event["listeners"]["outbound"].rsplit(":", 1)[1])
                    target.admin = int(event["admin"].rsplit(":", 1)[1])
                    started.set()
    copied.set()
