"""The native config format: what loads, what it becomes, and how errors read."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from nodeproxy.config import load_config, load_config_text
from nodeproxy.config.checks import parse_duration
from nodeproxy.config.model import (
    AdminConfig,
    ClusterConfig,
    Config,
    EndpointConfig,
    HeaderMatch,
    Limits,
    LogConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.errors import ConfigError

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parent.parent / "examples" / "nodeproxy.yaml"


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text).lstrip("\n"), env or {}, source="t.yaml")


def test_full_native_file_loads_into_the_model() -> None:
    config = load_config(str(DATA / "native-full.yaml"), env={})
    assert config.source_format == "native"
    assert config.node_name == "local"
    assert [(lc.name, lc.host, lc.port) for lc in config.listeners] == [
        ("outbound", "0.0.0.0", 4140),
        ("v6", "::1", 4141),
    ]
    assert config.admin == AdminConfig("127.0.0.1", 9901)
    assert config.limits == Limits(32768, 100, 0.25, 60.0, 1.5, 16384)
    assert config.log == LogConfig(format="json", level="debug", access_log=False)
    assert config.clusters["bdgreeter"] == ClusterConfig(
        name="bdgreeter",
        endpoints=(
            EndpointConfig("127.0.0.1", 3001, {"version": "v1"}, node="node-a"),
            EndpointConfig("127.0.0.1", 3002),
        ),
        namespace="default",
        connect_timeout=2.0,
        response_timeout=30.0,
        lb_policy="round_robin",
        max_connections_per_endpoint=8,
        idle_timeout=90.0,
    )
    assert config.clusters["bdgreeter-v2"].endpoints == (EndpointConfig("::1", 3003),)
    db = config.clusters["db.prod"]
    assert (db.namespace, db.endpoints) == (
        "prod",
        (EndpointConfig("db-0.db.prod.svc.cluster.local", 5432),),
    )
    # Every service's virtual host is on every listener.
    assert config.listeners[0].virtual_hosts == config.listeners[1].virtual_hosts
    greeter, v2, db_vh = config.listeners[0].virtual_hosts
    assert greeter == VirtualHost(
        name="bdgreeter",
        domains=("bdgreeter.default",),
        routes=(
            RouteRule(
                RouteMatch(prefix="/hello", headers=(HeaderMatch("x-canary", exact="1"),)),
                cluster="bdgreeter-v2",
                timeout=5.0,
                name="canary-header",
            ),
            RouteRule(RouteMatch(path="/exact"), cluster="bdgreeter"),
            RouteRule(
                RouteMatch(
                    prefix="/re",
                    headers=(
                        HeaderMatch("x-user", regex="a+b", invert=True),
                        HeaderMatch("x-debug", present=True),
                        HeaderMatch("x-tenant", prefix="acme-"),
                    ),
                ),
                cluster="db.prod",
            ),
            RouteRule(
                RouteMatch(prefix="/"),
                weighted=(WeightedCluster("bdgreeter", 90), WeightedCluster("bdgreeter-v2", 10)),
            ),
        ),
    )
    # No routes: one default rule, prefix "/", to the service itself.
    assert v2.routes == (RouteRule(RouteMatch(prefix="/"), cluster="bdgreeter-v2"),)
    assert (db_vh.name, db_vh.domains) == ("db.prod", ("db.prod",))


def test_minimal_file_gets_the_defaults() -> None:
    config = load("services: [{name: web, endpoints: ['127.0.0.1:80']}]")
    (listener,) = config.listeners
    assert (listener.name, listener.host, listener.port) == ("outbound", "0.0.0.0", 4140)
    assert config.admin == AdminConfig()
    assert config.limits == Limits()
    assert config.clusters["web"].connect_timeout == 1.0


def test_the_commented_example_loads() -> None:
    config = load_config(str(EXAMPLE), env={"HOST_IP": "10.1.2.3"})
    assert config.listeners[0].host == "10.1.2.3"
    assert set(config.clusters) == {"bdgreeter", "bdgreeter-v2", "inventory.shop"}
    assert config.listeners[0].virtual_hosts[2].domains == ("inventory.shop",)


# (yaml, field, line, words in the message)
BAD = [
    ("services: [{name: a, endpoints: [{address: '1.2.3.4:80', lables: {}}]}]",
     "services[0].endpoints[0].lables", 1, "unknown field"),
    ("services:\n  - name: a\n    endpoints:\n      - 1.2.3.4:80\n      - {address: 'x:0'}\n",
     "services[0].endpoints[1].address", 5, "port must be in 1..65535"),
    ("services:\n  - name: a\n    endpoints: ['1.2.3.4:99999']\n",
     "services[0].endpoints[0]", 3, "port must be"),
    ("services:\n  - name: a\n    endpoints: ['1.2.3.4']\n",
     "services[0].endpoints[0]", 3, "expected host:port"),
    ("services:\n  - name: a\n    endpoints: ['[zz::1]:80']\n",
     "services[0].endpoints[0]", 3, "invalid IPv6"),
    ("services:\n  - name: a\n    endpoints: ['1.2.3.4:80', '1.2.3.4:80']\n",
     "services[0].endpoints[1]", 3, "duplicate endpoint"),
    ("services:\n  - name: a\n  - name: a\n", "services[1]", 3, "duplicate service a.default"),
    ("services:\n  - name: Bad_Name\n", "services[0].name", 2, "not a DNS label"),
    ("services:\n  - namespace: x\n", "services[0]", 2, "missing required field 'name'"),
    ("services:\n  - name: a\n    routes:\n      - service: nope\n",
     "services[0].routes[0].service", 4, "unknown service 'nope'"),
    ("services:\n  - name: a\n    routes:\n      - match: {prefix: /}\n",
     "services[0].routes[0]", 4, "exactly one of service, weighted"),
    ("services:\n  - name: a\n    routes:\n      - {service: a, weighted: []}\n",
     "services[0].routes[0]", 4, "found service, weighted"),
    ("services:\n  - name: a\n    routes:\n      - weighted:\n"
     "          - {service: a, weight: 0}\n",
     "services[0].routes[0].weighted[0].weight", 5, "must be >= 1"),
    ("services:\n  - name: a\n    routes:\n      - weighted: []\n",
     "services[0].routes[0].weighted", 4, "must not be empty"),
    ("services:\n  - name: a\n    routes: []\n", "services[0].routes", 3, "must not be empty"),
    ("services:\n  - name: a\n    routes:\n      - match: {prefix: x}\n        service: a\n",
     "services[0].routes[0].match.prefix", 4, "must start with '/'"),
    ("services:\n  - name: a\n    routes:\n      - match: {prefix: /, path: /x}\n"
     "        service: a\n",
     "services[0].routes[0].match", 4, "not both"),
    ("services:\n  - name: a\n    routes:\n      - match:\n          headers:\n"
     "            - {name: x, exact: '1', prefix: '2'}\n        service: a\n",
     "services[0].routes[0].match.headers[0]", 6, "exactly one of exact, prefix, regex, present"),
    ("services:\n  - name: a\n    routes:\n      - match:\n          headers:\n"
     "            - {name: x}\n        service: a\n",
     "services[0].routes[0].match.headers[0]", 6, "found none"),
    ("services:\n  - name: a\n    routes:\n      - match:\n          headers:\n"
     "            - {name: x, regex: '(unclosed'}\n        service: a\n",
     "services[0].routes[0].match.headers[0].regex", 6, "invalid regex"),
    ("services:\n  - name: a\n    routes:\n      - match:\n          headers:\n"
     "            - {name: 'bad name', present: true}\n        service: a\n",
     "services[0].routes[0].match.headers[0].name", 6, "invalid header name"),
    ("services:\n  - name: a\n    lb_policy: fastest\n",
     "services[0].lb_policy", 3, "unsupported value 'fastest'"),
    ("services:\n  - name: a\n    connect_timeout: 0s\n", "services[0].connect_timeout", 3, "> 0"),
    ("services:\n  - name: a\n    connect_timeout: -1\n", "services[0].connect_timeout", 3, "> 0"),
    ("services:\n  - name: a\n    idle_timeout: soon\n", "services[0].idle_timeout", 3,
     "invalid duration 'soon'"),
    ("services:\n  - name: a\n    max_connections_per_endpoint: 0\n",
     "services[0].max_connections_per_endpoint", 3, "must be >= 1"),
    ("services:\n  - name: a\n    max_connections_per_endpoint: many\n",
     "services[0].max_connections_per_endpoint", 3, "expected an integer"),
    ("services: []\nlimits:\n  max_downstream_connections: -5\n",
     "limits.max_downstream_connections", 3, "must be >= 1"),
    ("services: []\nlimits:\n  max_request_header_byte: 5\n",
     "limits.max_request_header_byte", 3, "unknown field"),
    ("services: []\nlog: {format: xml}\n", "log.format", 2, "expected one of: auto, json, console"),
    ("services: []\nlog: {access_log: maybe}\n", "log.access_log", 2, "expected true or false"),
    ("services: []\nadmin: {address: 'localhost'}\n", "admin.address", 2, "expected host:port"),
    ("services: []\nlisteners:\n  - {name: a, address: '0.0.0.0:4140'}\n"
     "  - {name: a, address: '0.0.0.0:4141'}\n", "listeners[1]", 4, "duplicate listener name"),
    ("services: []\nlisteners:\n  - {address: '0.0.0.0:9901'}\n"
     "admin: {address: '127.0.0.1:9901'}\n",
     "admin.address", 4, "also used by listeners[0].address"),
    ("services: []\nlisteners: []\n", "listeners", 2, "must not be empty"),
    ("services: {name: a}\n", "services", 1, "expected a list, got a mapping"),
    ("services:\n  - name: a\n    endpoints:\n", "services[0].endpoints", 3,
     "expected a list, got null"),
    ("services: []\nservices: []\n", "services", 2, "duplicate key"),
    ("services: []\nservice: []\n", "service", 2, "unknown field"),
    ("services: []\nnode_name: ${NODE}\n", "node_name", 2, "environment variable NODE is not set"),
    ("services: []\nnode_name: ${NODE\n", "node_name", 2, "malformed"),
    ("services: []\nlog: a: b\n", "<yaml>", 2, "invalid YAML: mapping values are not allowed"),
    ("listeners: []\n", "<root>", 1, "expected services:"),
    ("- a\n- b\n", "<root>", 1, "expected a mapping at the top level"),
    ("", "<root>", 1, "empty"),
    ("services: []\nstatic_resources: {}\n", "<root>", 1, "use one format per file"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "line", "words"), BAD)
def test_bad_config_names_field_and_line(text: str, field: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, source="bad.yaml")
    err = info.value
    assert (err.field, err.line, err.file) == (field, line, "bad.yaml")
    assert words in err.message
    assert str(err).startswith(f"bad.yaml:{line}: {field}: ")


def test_env_expansion() -> None:
    text = """
        node_name: ${NODE_NAME}
        listeners: [{address: "${HOST_IP:-0.0.0.0}:${PORT:-4140}"}]
        services:
          - name: ${SVC:-web}
            connect_timeout: ${CT:-2s}
            endpoints: ["${UP_HOST}:${UP_PORT}"]
    """
    env = {"NODE_NAME": "node-7", "HOST_IP": "10.0.0.5", "UP_HOST": "10.9.9.9", "UP_PORT": "81"}
    config = load(text, env)
    assert config.node_name == "node-7"
    assert (config.listeners[0].host, config.listeners[0].port) == ("10.0.0.5", 4140)
    cluster = config.clusters["web"]
    assert cluster.connect_timeout == 2.0
    assert cluster.endpoints == (EndpointConfig("10.9.9.9", 81),)
    # ${VAR:-default}: an empty value takes the default too (shell semantics).
    assert load(text, {**env, "PORT": "", "SVC": "api"}).clusters.keys() == {"api"}
    # ${VAR} with VAR set but empty is the empty string, then validated as usual.
    with pytest.raises(ConfigError, match=r"t.yaml:2: listeners\[0\]\.address: must not be empty"):
        load("services: []\nlisteners: [{address: '${EMPTY}'}]\n", {"EMPTY": ""})


def test_missing_env_var_names_field_line_and_variable() -> None:
    text = "services:\n  - name: web\n    endpoints: ['${UPSTREAM}:80']\n"
    with pytest.raises(ConfigError) as info:
        load(text)
    assert info.value.field == "services[0].endpoints[0]"
    assert info.value.line == 3
    assert "UPSTREAM is not set" in info.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25), ("10s", 10.0), ("1.5s", 1.5), ("0.25s", 0.25), ("1m", 60.0),
        ("1h", 3600.0), ("1m30s", 90.0), ("2", 2.0), ("0.5", 0.5), (".5s", 0.5),
    ],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    config = load(f"services: [{{name: a, connect_timeout: {text}}}]")
    assert config.clusters["a"].connect_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 s", "10sec", "1d", "ms10", "1.2.3s", "5s5"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_yaml_number_duration_and_anchors() -> None:
    text = """
        defaults: &d {connect_timeout: 3, idle_timeout: 1.5}
        services:
          - {<<: *d, name: a}
    """
    # "defaults" is not a field: merges work, unknown keys still do not.
    with pytest.raises(ConfigError, match="defaults: unknown field"):
        load(text)
    text = "services:\n  - <<: {connect_timeout: 3, idle_timeout: 1.5}\n    name: a\n"
    cluster = load(text).clusters["a"]
    assert (cluster.connect_timeout, cluster.idle_timeout) == (3.0, 1.5)
    assert not math.isinf(cluster.response_timeout)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"services: []\nnode_name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(bad))


def test_label_values_keep_their_text() -> None:
    text = """
        services:
          - name: a
            endpoints:
              - {address: '1.1.1.1:1', labels: {v: 2, on: yes}}
    """
    (ep,) = load(text).clusters["a"].endpoints
    assert dict(ep.labels) == {"v": "2", "on": "yes"}
