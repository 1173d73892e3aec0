"""Small Envoy v3 bootstraps for table-driven tests: one listener, one route, clusters.

``bootstrap(...)`` builds the document as Python data (each keyword merges
into one level: the connection manager, the virtual host, the route, its
action, the first cluster) and ``load(doc)`` reads it the way
``nodeproxy run`` would (YAML text through ``load_config_text``). A value of
``None`` removes the key, so ``route={"route": None, "redirect": {...}}``
turns the route into a redirect.
"""

from __future__ import annotations

from typing import Any

import yaml

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config

T = "type.googleapis.com/"
HCM_TYPE = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = T + "envoy.extensions.filters.http.router.v3.Router"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def merged(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (extra or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def cluster(name: str, *ports: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": address("127.0.0.1", p)}} for p in ports]
    base = {
        "name": name,
        "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }
    return merged(base, extra)


def bootstrap(
    *,
    hcm: dict[str, Any] | None = None,
    vhost: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    action: dict[str, Any] | None = None,
    match: dict[str, Any] | None = None,
    first: dict[str, Any] | None = None,
    ports: tuple[int, ...] = (8001,),
    clusters: tuple[dict[str, Any], ...] = (),
    listener: dict[str, Any] | None = None,
    root: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A v3 bootstrap: listener ``l`` on 127.0.0.1:0 -> vhost ``vh`` (``*``) -> one route
    (prefix ``/``) -> cluster ``a`` (``ports`` on 127.0.0.1), plus ``clusters``."""
    the_route = merged(
        {
            "match": merged({"prefix": "/"}, match),
            "route": merged({"cluster": "a"}, action),
        },
        route,
    )
    vh = merged({"name": "vh", "domains": ["*"], "routes": [the_route]}, vhost)
    manager = merged(
        {
            "@type": HCM_TYPE,
            "stat_prefix": "ingress",
            "route_config": {"name": "rc", "virtual_hosts": [vh]},
            "http_filters": [ROUTER],
        },
        hcm,
    )
    lst = merged(
        {
            "name": "l",
            "address": address("127.0.0.1", 0),
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": manager,
                        }
                    ]
                }
            ],
        },
        listener,
    )
    doc = {
        "static_resources": {
            "listeners": [lst],
            "clusters": [cluster("a", *ports, extra=first), *clusters],
        }
    }
    return merged(doc, root)


def load(doc: dict[str, Any]) -> Config:
    return load_config_text(yaml.safe_dump(doc, sort_keys=False), {}, source="envoy.yaml")
