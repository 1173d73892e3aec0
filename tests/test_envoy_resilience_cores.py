"""What the cores gained for Envoy's semantics, decided without I/O.

The outlier detector's ``enforcing_*`` (Envoy's: a detection that is not
enforced ejects nothing; ``DISABLED`` is Envoy without ``outlier_detection``)
and the retry policy's ``retriable-status-codes``/``retriable-4xx``; both also
in the native format.
"""

from __future__ import annotations

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.errors import ConfigError
from nodeproxy.resilience.outlier import DISABLED, OutlierConfig, OutlierDetector
from nodeproxy.resilience.retry import RetryOn, RetryPolicy

A, B = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)


def ejections(config: OutlierConfig, statuses: list[int]) -> list[str]:
    detector = OutlierDetector(config)
    detector.sync([A, B], 0.0)
    out = []
    for i, status in enumerate(statuses):
        if (ejection := detector.put_status(A, status, float(i))) is not None:
            out.append(ejection.reason)
    return out


@pytest.mark.parametrize(
    ("config", "statuses", "expected"),
    [
        (OutlierConfig(), [503] * 5, ["consecutive_gateway_failure"]),
        (DISABLED, [500] * 100 + [503] * 100, []),
        # gateway failures detected but not enforced (Envoy's default): the 5xx count ejects
        (OutlierConfig(consecutive_5xx=7, enforcing_consecutive_gateway_failure=0), [503] * 7,
         ["consecutive_5xx"]),
        (OutlierConfig(enforcing_consecutive_5xx=0), [500] * 10, []),
        (OutlierConfig(enforcing_consecutive_5xx=0), [502] * 5, ["consecutive_gateway_failure"]),
    ],
)  # fmt: skip
def test_enforcement(config: OutlierConfig, statuses: list[int], expected: list[str]) -> None:
    assert ejections(config, statuses) == expected


@pytest.mark.parametrize(
    ("retry_on", "codes", "status", "covered"),
    [
        ("retriable-status-codes", (409, 429), 429, True),
        ("retriable-status-codes", (409,), 429, False),
        ("5xx", (409,), 409, False),  # the codes alone retry nothing
        ("retriable-4xx", (), 409, True),
        ("retriable-4xx", (), 404, False),
        ("gateway-error,retriable-status-codes", (500,), 500, True),
    ],
)
def test_retriable_status_codes(
    retry_on: str, codes: tuple[int, ...], status: int, covered: bool
) -> None:
    policy = RetryPolicy(
        retry_on=RetryPolicy.parse_retry_on(retry_on), retriable_status_codes=frozenset(codes)
    )
    assert policy.covers(status) is covered
    assert RetryOn("retriable-status-codes") is RetryOn.RETRIABLE_STATUS_CODES


NATIVE = """
services:
  - name: a
    endpoints: ["127.0.0.1:8001"]
    outlier_detection: {OUTLIER}
    routes:
      - {service: a, retries: {retry_on: [retriable-status-codes], retriable_status_codes: [409]}}
"""


def test_the_native_format_has_them_too() -> None:
    config = load_config_text(NATIVE.replace("OUTLIER", "enforcing_consecutive_gateway_failure: 0"))
    assert config.clusters["a"].outlier == OutlierConfig(enforcing_consecutive_gateway_failure=0)
    retries = config.listeners[0].virtual_hosts[0].routes[0].retries
    assert retries is not None
    assert retries.retriable_status_codes == (409,)
    with pytest.raises(ConfigError, match="only 0 or 100"):
        load_config_text(NATIVE.replace("OUTLIER", "enforcing_consecutive_5xx: 50"))
