"""Active health checks: the config section and one probe against real sockets."""

from __future__ import annotations

import pytest
import trio

from nodeproxy.config import load_config_text
from nodeproxy.config.model import EndpointConfig
from nodeproxy.errors import ConfigError
from nodeproxy.resilience.health import HealthCheckConfig
from nodeproxy.upstream.health_check import probe
from tests.helpers.replicas import Replica, replicas

CONFIG = """
listeners: [{address: "127.0.0.1:0"}]
services:
  - name: svc
    health_check: %s
    endpoints: [{address: "127.0.0.1:1"}]
"""


def test_health_check_section_reads_every_field_with_kubernetes_defaults() -> None:
    full = (
        "{path: /ready, interval: 2s, timeout: 250ms, healthy_threshold: 2, unhealthy_threshold: 5}"
    )
    cluster = load_config_text(CONFIG % full).clusters["svc"]
    assert cluster.health_check == HealthCheckConfig("/ready", 2.0, 0.25, 5, 2)
    assert load_config_text(CONFIG % "{}").clusters["svc"].health_check == HealthCheckConfig()
    assert (
        load_config_text(CONFIG.replace("    health_check: %s\n", "")).clusters["svc"].health_check
        is None
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{path: healthz}", "origin-form path"),
        ("{interval: 0s}", "interval"),
        ("{unhealthy_threshold: 0}", "must be >= 1"),
        ("{port: 8080}", "port"),
    ],
)
def test_health_check_section_rejects_bad_values(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_text(CONFIG % section)


async def test_probe_passes_on_2xx_and_fails_on_5xx_refusal_and_timeout() -> None:
    up, down, slow = Replica("up"), Replica("down"), Replica("slow", delay=5.0)
    down.health_status = 503
    async with replicas(up, down, slow):
        ep = EndpointConfig(host="127.0.0.1", port=up.port)
        assert await probe(ep, "/healthz", 1.0) is True
        assert up.probes == 1
        assert (
            await probe(EndpointConfig(host="127.0.0.1", port=down.port), "/healthz", 1.0) is False
        )
        with trio.fail_after(2):  # bounded by the probe's own timeout, not the replica's delay
            assert (
                await probe(EndpointConfig(host="127.0.0.1", port=slow.port), "/healthz", 0.1)
                is False
            )
    refused = EndpointConfig(host="127.0.0.1", port=up.port)  # the replica is gone now
    assert await probe(refused, "/healthz", 1.0) is False
