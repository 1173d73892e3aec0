"""The embedded demo's config, written as the native YAML a user would write, and its banner.

Why text and not a `Config` built in code: the demo then goes through the same loader and
validation as `nodeproxy run --config`, and `demo_config_text` doubles as a worked example of the
format (the banner tells users how to print it). The benchmark reuses it with logging turned down.
"""

from __future__ import annotations

import datetime

from nodeproxy.demo.greeter import wall_clock_today

DEMO_SERVICE = "bdgreeter"


def demo_config_text(
    greeter_ports: list[int],
    proxy_port: int = 4140,
    admin_port: int = 9901,
    *,
    host: str = "127.0.0.1",
    log_level: str = "info",
    access_log: bool = True,
    drain_timeout: str = "5s",
) -> str:
    """Native YAML routing service `bdgreeter` to greeter replicas on `host:<port>`.

    Every replica gets the label `version: v1`. Everything listens on loopback only.
    """
    if not greeter_ports:
        raise ValueError("the demo needs at least one greeter port")
    endpoints = "\n".join(
        f"      - address: {host}:{port}\n        labels: {{version: v1}}" for port in greeter_ports
    )
    return f"""\
# nodeproxy embedded demo: the proxy in front of {len(greeter_ports)} birthday greeter replica(s).
# Same format as `nodeproxy run --config FILE`; check a copy with `nodeproxy check-config FILE`.
node_name: ${{NODE_NAME:-demo}}
default_namespace: default        # so "bdgreeter" means "bdgreeter.default"
cluster_domain: cluster.local

listeners:
  - name: outbound                # point clients here: http_proxy style or with a Host header
    address: {f"{host}:{proxy_port}":<21}# loopback only: the demo serves this machine

admin:
  address: {f"{host}:{admin_port}":<23}# /ready /clusters /stats/prometheus /config_dump

limits:
  drain_timeout: {drain_timeout:<17}# Ctrl-C drains in-flight requests at most this long

log:
  format: auto                    # console on a terminal, JSON otherwise
  level: {log_level}
  access_log: {"true" if access_log else "false"}

services:
  - name: {DEMO_SERVICE:<24}# reached as bdgreeter, bdgreeter.default, ...svc.cluster.local
    namespace: default
    connect_timeout: 1s           # refused or slow connects answer 503 fast
    response_timeout: 15s         # an upstream slower than this answers 504
    lb_policy: round_robin        # watch x-greeter-replica alternate
    endpoints:
{endpoints}
    routes:
      - name: hello
        match: {{prefix: /hello/}}
        service: {DEMO_SERVICE}
      - name: health
        match: {{path: /healthz}}
        service: {DEMO_SERVICE}
"""


def birthday_today(today: datetime.date) -> str:
    """A date of birth whose month and day are today's (1992 is a leap year, so 29 Feb works)."""
    return today.replace(year=1992).isoformat()


def demo_banner(
    proxy_port: int = 4140,
    admin_port: int = 9901,
    *,
    greeter_ports: list[int] | None = None,
    today: datetime.date | None = None,
) -> str:
    """The curl lines to try against a running demo."""
    day = today if today is not None else wall_clock_today()
    proxy = f"http://127.0.0.1:{proxy_port}"
    admin = f"127.0.0.1:{admin_port}"
    doc = f'{{"dateOfBirth":"{birthday_today(day)}"}}'
    json_post = f"-X POST -H 'content-type: application/json' -d '{doc}'"
    replicas = ""
    if greeter_ports:
        listed = ", ".join(f"127.0.0.1:{p}" for p in greeter_ports)
        replicas = f" (greeter replicas on {listed})"
    return f"""\
nodeproxy demo: service "{DEMO_SERVICE}" behind the proxy on {proxy}{replicas}

Try it:
  # http_proxy style (absolute-form request line); today's birthday:
  curl -x {proxy} {json_post} http://{DEMO_SERVICE}/hello/Magalixcorp
  # origin-form with a Host header, the way a pod pointed at the node proxy would:
  curl -H 'Host: {DEMO_SERVICE}' {json_post} {proxy}/hello/Magalixcorp
  # a GET; run it twice and watch x-greeter-replica alternate (round robin):
  curl -i -x {proxy} http://{DEMO_SERVICE}/hello/Magalixcorp
  # an unknown service: 404 with x-nodeproxy-error: unknown_service
  curl -i -x {proxy} http://nosuchservice/
  # a known service but a path no route matches: 404 with x-nodeproxy-error: no_route
  curl -i -x {proxy} http://{DEMO_SERVICE}/admin

Admin:
  # the live dashboard (services, endpoints, rates, calling pods): open in a browser
  #   http://{admin}/
  curl {admin}/clusters
  curl {admin}/stats/prometheus
  curl -i {admin}/ready

Ctrl-C drains in-flight requests and stops everything.
"""
