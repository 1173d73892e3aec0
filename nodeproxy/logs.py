"""Logging, configured once at start-up: one processor chain, one renderer.

Why this shape: the data path logs one rich ``access`` event per request, so
logging sits on the hot path. structlog's ``make_filtering_bound_logger``
turns calls below the configured level into no-ops, and
``cache_logger_on_first_use`` makes each module-level logger resolve its
configuration only once. Per-connection fields (``source``, ``listener``...)
are bound with ``structlog.contextvars.bound_contextvars``; trio copies
contextvars into every task, so they follow the connection's task and are
merged into each event here.

Output is JSON lines on stdout by default (what a log shipper on a node
expects); ``console`` renders for humans and ``auto`` picks console on a TTY.
The access log can be turned off (``log.access_log: false``) without touching
the data path: a processor drops the ``access`` events of the
``nodeproxy.access`` logger. In JSON mode the access line skips this chain
altogether (``access_log.py``: rendered once, written in batches).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from nodeproxy import access_log
from nodeproxy.config.model import LogConfig

ACCESS_LOGGER = "nodeproxy.access"
ACCESS_EVENT = "access"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that remembers the name it was asked for."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name

    def __repr__(self) -> str:
        return f"<NamedWriteLogger {self.name!r}>"


class NamedWriteLoggerFactory:
    """``structlog.get_logger("nodeproxy.access")`` -> a logger named so.

    structlog passes ``get_logger``'s positional arguments to the factory, so
    the name is available to ``add_logger_name`` without the stdlib.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else ""
        return NamedWriteLogger(self._file, name)


def add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Add ``logger`` (the name given to ``get_logger``) when it has one."""
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def drop_access_events(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop the per-request access line (installed only when ``access_log`` is off)."""
    if event_dict.get("event") == ACCESS_EVENT and (
        event_dict.get("logger") == ACCESS_LOGGER or getattr(logger, "name", "") == ACCESS_LOGGER
    ):
        raise structlog.DropEvent
    return event_dict


def flush_access_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Write any batched access lines before this (rarer) event, so the order holds."""
    access_log.flush()
    return event_dict


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` -> ``console`` on a TTY, else ``json``; other values pass through."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def build_processors(cfg: LogConfig, fmt: str, *, colors: bool = False) -> list[Processor]:
    """The processor chain for ``cfg`` rendered as ``fmt`` (``json`` or ``console``)."""
    processors: list[Processor] = [
        flush_access_first,
        structlog.contextvars.merge_contextvars,
        add_logger_name,
    ]
    if not cfg.access_log:
        processors.append(drop_access_events)
    processors += [
        structlog.processors.add_log_level,
        # wall clock: log timestamps are for humans and log stores, never for deadlines.
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    return processors


def configure_logging(cfg: LogConfig, stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process (call once, from the CLI).

    ``stream`` defaults to ``sys.stdout``. ``structlog.testing.capture_logs()``
    still works afterwards: it edits the processor list in place, which cached
    loggers share.
    """
    out = stream if stream is not None else sys.stdout
    fmt = resolve_format(cfg.format, out)
    fast = fmt == "json" and cfg.access_log and _LEVELS[cfg.level] <= logging.INFO
    access_log.install(access_log.AccessWriter(out) if fast else None)
    colors = fmt == "console" and resolve_format("auto", out) == "console"
    structlog.configure(
        processors=build_processors(cfg, fmt, colors=colors),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[cfg.level]),
        context_class=dict,
        logger_factory=NamedWriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
