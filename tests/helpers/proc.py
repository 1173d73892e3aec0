"""Run the real `nodeproxy` command as a subprocess, the way an operator does.

The proxy binds port 0 and reports the ports it got in its JSON ``started``
log line; we wait for that line (bounded by a deadline) instead of sleeping
or polling, so start-up costs exactly as long as it takes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

STARTUP_DEADLINE = 30.0


@dataclass
class RunningProxy:
    process: trio.Process
    listener_ports: dict[str, int]
    admin_port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # stdout lines that are not JSON (a banner)
    _buffer: bytearray = field(default_factory=bytearray)

    async def read_event(self, event: str) -> dict[str, Any]:
        """Read log lines until one whose ``event`` is ``event``; return it."""
        while True:
            while b"\n" in self._buffer:
                raw, _, rest = self._buffer.partition(b"\n")
                self._buffer[:] = rest
                try:
                    line = json.loads(raw)
                except ValueError:
                    self.text.append(raw.decode(errors="replace"))
                    continue
                self.lines.append(line)
                if line.get("event") == event:
                    return dict(line)
            await self._read_more(f"logging {event!r}")

    async def read_text(self, until: str) -> list[str]:
        """Read until a plain-text line containing ``until``; the plain-text lines so far."""
        while True:
            while b"\n" in self._buffer:
                raw, _, rest = self._buffer.partition(b"\n")
                self._buffer[:] = rest
                try:
                    self.lines.append(json.loads(raw))
                except ValueError:
                    self.text.append(raw.decode(errors="replace"))
            if any(until in line for line in self.text):
                return list(self.text)
            await self._read_more(f"printing {until!r}")

    async def _read_more(self, waiting_for: str) -> None:
        assert self.process.stdout is not None
        chunk = await self.process.stdout.receive_some(65536)
        if not chunk:
            raise EOFError(f"nodeproxy exited before {waiting_for}: {self.lines[-5:]}")
        self._buffer += chunk

    def signal(self, signum: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, deadline: float = 30.0) -> int:
        """Drain stdout (so the process never blocks on a full pipe) and wait for exit."""
        with trio.fail_after(deadline):
            assert self.process.stdout is not None
            while chunk := await self.process.stdout.receive_some(65536):
                self._buffer += chunk
            code = await self.process.wait()
        for raw in bytes(self._buffer).splitlines():  # the lines not read yet, into ``lines``
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue
        self._buffer.clear()
        return code


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@asynccontextmanager
async def running_nodeproxy(
    *args: str, env: dict[str, str | None] | None = None
) -> AsyncIterator[RunningProxy]:
    """Start ``python -m nodeproxy ARGS`` and yield once it logged ``started``.

    ``env`` changes the inherited environment (a None value removes the variable).
    """
    environ = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "nodeproxy", *args],
        stdout=-1,  # subprocess.PIPE
        stdin=-3,  # subprocess.DEVNULL
        env=environ,
    )
    try:
        proxy = RunningProxy(process, {}, 0)
        with trio.fail_after(STARTUP_DEADLINE):
            started = await proxy.read_event("started")
        proxy.listener_ports = {name: _port(a) for name, a in started["listeners"].items()}
        proxy.admin_port = _port(started["admin"])
        yield proxy
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
