"""The per-request access line, rendered directly and written in batches.

Why not a structlog call: the access line is logged once per request, and
structlog's chain (contextvars, level, ISO timestamp, JSON renderer, a write
and flush per line) cost about 17 µs a line here, more than a tenth of a
proxied request on the compiled codec; even one ``json`` encoder call over a
dict cost a few µs. In JSON mode (what a log shipper on a node reads)
``configure_logging`` installs an ``AccessWriter``: ``render`` writes the
request's fields (``Exchange``: the caller's identity and the policy rule
included, no contextvars) as one JSON object with ``event``, ``logger``,
``level`` and ``timestamp``, the strings escaped by the json module's C
escaper and the timestamp's seconds formatted once per second. Lines go to a
buffer, written out when it holds ``max_lines`` lines and at least every
``FLUSH_INTERVAL`` by the app's flusher task, and on the way out (drain,
exit, ``atexit``): no line is lost at drain. Console mode, tests that capture
structlog events, and a process that never configured logging get the same
fields (``access_fields``) as a structlog ``access`` event.
"""

from __future__ import annotations

import atexit
import json
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, TextIO

import structlog
import trio

if TYPE_CHECKING:
    from nodeproxy.server.downstream import Exchange

ACCESS_LOGGER = "nodeproxy.access"
FLUSH_INTERVAL = 0.2  # seconds a line may wait in the buffer

_log = structlog.get_logger(ACCESS_LOGGER)
# Final: C statics in the compiled build (a plain global is a dict lookup at every use, eight
# a line for _string alone).
_encode: Final = json.JSONEncoder(ensure_ascii=False, default=repr).encode
_string: Final = json.encoder.encode_basestring  # the C escaper: a quoted JSON string, UTF-8 kept
_TAIL: Final = f',"event":"access","logger":"{ACCESS_LOGGER}","level":"info","timestamp":"'


def _millis(seconds: float) -> str:
    """Milliseconds with three decimals, as ``round(ms, 3)`` reads in JSON; integer
    arithmetic, because formatting a float costs a microsecond."""
    us = int(seconds * 1e6)
    return f"{us // 1000}.{str(1000 + us % 1000)[1:]}"


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


class _WallClock:
    """ISO 8601 UTC timestamps; the part up to the second is formatted once per second."""

    second: ClassVar[int] = -1
    prefix: ClassVar[str] = ""

    @classmethod
    def now(cls) -> str:
        t = time.time()  # wall clock: a log timestamp is for people and log stores
        second = int(t)
        if second != cls.second:
            cls.second, cls.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        return f"{cls.prefix}.{str(1_000_000 + int((t - second) * 1e6))[1:]}Z"


def access_fields(ex: Exchange, duration: float, received: int, sent: int) -> dict[str, Any]:
    """The access line's fields, for the structlog path (``render`` writes the same)."""
    fields: dict[str, Any] = {
        "listener": ex.listener,
        "method": ex.method,
        "authority": ex.authority,
        "path": ex.path,
        "protocol": ex.protocol,
        "status": ex.status,
        "duration_ms": float(_millis(duration)),
        "upstream": ex.upstream,
        "cluster": ex.cluster,
        "bytes_received": received,
        "bytes_sent": sent,
        "request_id": ex.request_id,
        "cause": ex.cause,
        "source": ex.source,
    }
    for name, value in _optional(ex):
        fields[name] = value
    return fields


def _optional(ex: Exchange) -> list[tuple[str, str]]:
    """Fields present only when set: absent rather than null, as before."""
    out: list[tuple[str, str]] = []
    if ex.upgrade is not None:
        out.append(("upgrade", ex.upgrade))
    if ex.client is not None:  # from x-forwarded-for (http1/forwarding.py)
        out.append(("client", ex.client))
    if ex.peer_identity is not None:  # the mTLS caller (inbound listener)
        out.append(("peer_identity", ex.peer_identity))
    if ex.policy_rule is not None:  # the rule that allowed or denied it (mesh)
        out.append(("policy_rule", ex.policy_rule))
    return out


def render(ex: Exchange, duration: float, received: int, sent: int) -> str:
    """One access line as JSON: ``access_fields`` plus event, logger, level, timestamp."""
    line = (
        f'{{"listener":{_string(ex.listener)},"method":{_string(ex.method)},'
        f'"authority":{_string(ex.authority)},"path":{_string(ex.path)},'
        f'"protocol":{_string(ex.protocol)},"status":{ex.status},'
        f'"duration_ms":{_millis(duration)},"upstream":{_nullable(ex.upstream)},'
        f'"cluster":{_nullable(ex.cluster)},"bytes_received":{received},"bytes_sent":{sent},'
        f'"request_id":{_string(ex.request_id)},"cause":{_nullable(ex.cause)},'
        f'"source":{_string(ex.source)}'
    )
    if ex.upgrade or ex.client or ex.peer_identity or ex.policy_rule:  # rare: one test
        line += "".join(f",{_string(k)}:{_string(v)}" for k, v in _optional(ex))
    return f'{line}{_TAIL}{_WallClock.now()}"}}'


class AccessWriter:
    """Owns the access lines not yet written; one per process (``install``)."""

    def __init__(self, out: TextIO, max_lines: int = 64) -> None:
        self.out = out
        self.max_lines = max_lines
        self.lines: list[str] = []

    def __repr__(self) -> str:
        return f"<AccessWriter [{len(self.lines)} buffered]>"

    def emit(self, fields: dict[str, Any]) -> None:
        """Render an access line from ``fields``; written with the next flush."""
        line = dict(fields, event="access", logger=ACCESS_LOGGER, level="info")
        line["timestamp"] = _WallClock.now()
        self.write(_encode(line))

    def write(self, line: str) -> None:
        """Buffer one rendered line (no newline); written with the next flush."""
        lines = self.lines
        lines.append(line)
        if len(lines) >= self.max_lines:
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


def emit(ex: Exchange, duration: float, received: int, sent: int) -> None:
    """Log one request's line: batched JSON when installed, else a structlog ``access`` event."""
    writer = _writer
    if writer is not None:
        writer.write(render(ex, duration, received, sent))
    else:
        _log.info("access", **access_fields(ex, duration, received, sent))


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
