"""Logging as an operator sees it: JSON lines, levels, context fields, access log switch."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
from structlog.contextvars import bound_contextvars

from nodeproxy import access_log
from nodeproxy.config.model import LogConfig
from nodeproxy.logs import (
    ACCESS_LOGGER,
    add_logger_name,
    configure_logging,
    drop_access_events,
    resolve_format,
)
from tests.helpers.backends import backend, run_proxy, simple_config


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    access_log.install(None)  # configure_logging installed the batched access writer


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def access_event(log: Any) -> None:
    log.info(
        "access",
        listener="outbound",
        method="GET",
        authority="bdgreeter",
        path="/hello",
        protocol="HTTP/1.1",
        status=200,
        duration_ms=1.25,
        upstream="127.0.0.1:3000",
        cluster="bdgreeter",
        bytes_received=0,
        bytes_sent=12,
        request_id="abc",
        cause=None,
        source="127.0.0.1:5555",
    )


def test_json_lines_with_iso_utc_timestamp_level_and_logger_name() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json"), out)
    structlog.get_logger("nodeproxy.server").info("listening", port=4140)
    structlog.get_logger("nodeproxy.server").warning("slow", ms=3)

    first, second = lines(out)
    assert first["event"] == "listening"
    assert first["port"] == 4140
    assert first["level"] == "info"
    assert first["logger"] == "nodeproxy.server"
    ts = datetime.fromisoformat(first["timestamp"])
    assert ts.utcoffset() is not None
    assert ts.utcoffset() == UTC.utcoffset(None)
    assert second["level"] == "warning"


async def proxied_request(log_config: LogConfig, out: io.StringIO) -> tuple[httpx.Response, int]:
    """One GET through the in-process proxy with logging configured as ``log_config`` into
    ``out``; the response and the backend's port. Access lines are flushed."""
    async with backend() as b:
        config = replace(simple_config({"web": [b.address]}), log=log_config)
        configure_logging(config.log, out)
        # The proxy's module-level loggers must not stay bound to ``out`` after the test
        # (a cached logger ignores the reset and later capture_logs): no caching here.
        structlog.configure(cache_logger_on_first_use=False)
        async with run_proxy(config) as p, httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(f"{p.url}/hello?x=1", headers={"host": "web.default"})
    access_log.flush()
    return r, b.port


async def test_the_proxys_access_line_carries_the_contract_fields() -> None:
    out = io.StringIO()
    r, port = await proxied_request(LogConfig(format="json"), out)
    (line,) = [e for e in lines(out) if e["event"] == "access"]
    seen_upstream = dict(r.json()["headers"])  # what the backend received
    assert r.status_code == 200
    assert line["logger"] == ACCESS_LOGGER
    assert line["level"] == "info"
    assert (line["listener"], line["method"], line["protocol"]) == ("outbound", "GET", "HTTP/1.1")
    assert (line["authority"], line["path"]) == ("web.default", "/hello?x=1")
    assert (line["status"], line["cause"]) == (200, None)
    assert (line["cluster"], line["upstream"]) == ("web", f"127.0.0.1:{port}")
    assert line["request_id"] == seen_upstream["x-request-id"]
    assert line["bytes_sent"] > len(r.content) > 0  # the head and the body
    assert line["bytes_received"] > 0
    assert line["duration_ms"] > 0
    assert line["source"].startswith("127.0.0.1:")
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() == UTC.utcoffset(None)


def test_level_filtering_drops_lower_levels() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="warning"), out)
    log = structlog.get_logger("x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [e["event"] for e in lines(out)] == ["w", "e"]


def test_debug_level_lets_debug_through() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="debug"), out)
    structlog.get_logger("x").debug("d")
    assert [e["event"] for e in lines(out)] == ["d"]


def test_contextvars_bound_per_connection_are_merged() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json"), out)
    log = structlog.get_logger("nodeproxy.server")
    with bound_contextvars(source="10.0.0.7:4242", listener="outbound"):
        log.info("inside")
    log.info("outside")
    inside, outside = lines(out)
    assert inside["source"] == "10.0.0.7:4242"
    assert inside["listener"] == "outbound"
    assert "source" not in outside


async def test_access_log_switch_turns_the_proxys_access_lines_off_and_on() -> None:
    written = {}
    for enabled in (False, True):
        out = io.StringIO()
        r, _ = await proxied_request(LogConfig(format="json", access_log=enabled), out)
        assert r.status_code == 200
        written[enabled] = [e["path"] for e in lines(out) if e["event"] == "access"]
    assert written == {False: [], True: ["/hello?x=1"]}


def test_access_log_off_drops_only_access_events() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", access_log=False), out)
    access_event(structlog.get_logger(ACCESS_LOGGER))
    structlog.get_logger(ACCESS_LOGGER).warning("access_log_overflow")
    structlog.get_logger("nodeproxy.other").info("access")
    events = [(e.get("logger"), e["event"]) for e in lines(out)]
    assert events == [(ACCESS_LOGGER, "access_log_overflow"), ("nodeproxy.other", "access")]


async def test_console_access_line_has_the_same_fields() -> None:
    out = io.StringIO()
    r, port = await proxied_request(LogConfig(format="console"), out)
    (line,) = [ln for ln in out.getvalue().splitlines() if " access " in f" {ln} "]
    assert r.status_code == 200
    for field in ("status=200", "cluster=web", f"upstream=127.0.0.1:{port}", "method=GET"):
        assert field in line


def test_exceptions_are_rendered_into_the_json_line() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json"), out)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("x").exception("failed")
    (line,) = lines(out)
    assert "ValueError: boom" in line["exception"]


def test_console_format_is_not_json_and_has_the_fields() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="console"), out)
    structlog.get_logger("x").info("hello", port=4140)
    text = out.getvalue()
    assert "hello" in text
    assert "port=4140" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "\x1b[" not in text  # not a TTY: no colour codes


def test_auto_picks_console_on_a_tty_and_json_otherwise() -> None:
    assert resolve_format("auto", TTYStream()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", TTYStream()) == "json"

    tty = TTYStream()
    configure_logging(LogConfig(format="auto"), tty)
    structlog.get_logger("x").info("hello")
    assert not tty.getvalue().startswith("{")

    plain = io.StringIO()
    configure_logging(LogConfig(format="auto"), plain)
    structlog.get_logger("x").info("hello")
    assert lines(plain)[0]["event"] == "hello"


def test_capture_logs_still_works_after_configuration_and_caching() -> None:
    configure_logging(LogConfig(format="json"), io.StringIO())
    log = structlog.get_logger(ACCESS_LOGGER)
    log.info("warm-up")  # the logger is now cached
    with structlog.testing.capture_logs() as captured:
        access_event(log)
    assert captured[0]["event"] == "access"
    assert captured[0]["status"] == 200


def test_drop_processor_with_capture_logs() -> None:
    configure_logging(LogConfig(format="json"), io.StringIO())
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars, add_logger_name, drop_access_events]
    ) as captured:
        access_event(structlog.get_logger(ACCESS_LOGGER))
        structlog.get_logger(ACCESS_LOGGER).info("kept")
    assert [e["event"] for e in captured] == ["kept"]
