"""The per-request access line, written without a processor chain and in batches.

Why not a structlog call: the access line is logged once per request, and
structlog's chain (contextvars, level, ISO timestamp, JSON renderer, a write
and flush per line) cost about 17 µs a line here, more than a tenth of a
proxied request on the compiled codec. In JSON mode (what a log shipper on a
node reads) ``configure_logging`` installs an ``AccessWriter`` instead: it
renders the same JSON object (the request's fields, the connection's bound
contextvars, ``event``, ``logger``, ``level``, ``timestamp``) with one
encoder call and appends it to a buffer, written out when it holds
``max_lines`` lines and at least every ``FLUSH_INTERVAL`` by the app's
flusher task, and on the way out (drain, exit, ``atexit``): no line is lost
at drain. Console mode, tests that capture structlog events, and a process
that never configured logging keep the structlog path.
"""

from __future__ import annotations

import atexit
import json
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
import trio

ACCESS_LOGGER = "nodeproxy.access"
FLUSH_INTERVAL = 0.2  # seconds a line may wait in the buffer

_log = structlog.get_logger(ACCESS_LOGGER)
_encode = json.JSONEncoder(ensure_ascii=False, default=repr).encode


class AccessWriter:
    """Owns the access lines not yet written; one per process (``install``)."""

    def __init__(self, out: TextIO, max_lines: int = 64) -> None:
        self.out = out
        self.max_lines = max_lines
        self.lines: list[str] = []

    def __repr__(self) -> str:
        return f"<AccessWriter [{len(self.lines)} buffered]>"

    def emit(self, fields: dict[str, Any]) -> None:
        """Render one access line; written with the next flush."""
        line = structlog.contextvars.merge_contextvars(None, "info", fields)
        line["event"] = "access"
        line["logger"] = ACCESS_LOGGER
        line["level"] = "info"
        line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.lines.append(_encode(line))
        if len(self.lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now (one write, one flush)."""
        if not self.lines:
            return
        text = "\n".join(self.lines) + "\n"
        self.lines.clear()
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # stdout closed or gone: nothing to write to
            pass


_writer: AccessWriter | None = None


def install(writer: AccessWriter | None) -> None:
    """Route access lines through ``writer`` (None: through structlog)."""
    global _writer
    if _writer is not None:
        _writer.flush()
    _writer = writer


def emit(fields: dict[str, Any]) -> None:
    """Log one access line: batched JSON when installed, else a structlog ``access`` event."""
    writer = _writer
    if writer is not None:
        writer.emit(fields)
    else:
        _log.info("access", **fields)


def flush() -> None:
    if _writer is not None:
        _writer.flush()


atexit.register(flush)  # whichever writer is installed when the process exits


async def run_flusher(interval: float = FLUSH_INTERVAL) -> None:
    """Write buffered lines at least every ``interval``; flushes once more when cancelled."""
    try:
        while True:
            await trio.sleep(interval)
            flush()
    finally:
        flush()
