"""Load a config file: native nodeproxy YAML or an Envoy bootstrap, detected by shape.

``load_config`` is the only entry point the rest of the program uses. It
returns a complete, validated ``Config`` or raises one ``ConfigError`` naming
the file, line and field; it never returns something half-loaded. A document
with a top-level ``services`` key is native (``loader.py``); one with
``static_resources``, or an ``admin`` block in Envoy's shape
(``admin.address.socket_address``), is an Envoy bootstrap (``envoy.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import yaml

from nodeproxy.config.model import Config
from nodeproxy.config.yamlsrc import Node, Source, compose
from nodeproxy.errors import ConfigError

__all__ = ["ConfigError", "detect_format", "load_config", "load_config_text"]


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the config file at ``path``.

    ``env`` is used for ``${VAR}`` expansion (default: ``os.environ``).
    An unreadable file is a ``ConfigError`` too.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read: {exc.strerror or exc}", None, path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"not UTF-8 text: {exc.reason}", None, path) from None
    return load_config_text(text, env, source=path)


def load_config_text(
    text: str, env: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Parse and validate config text; ``source`` names it in error messages."""
    src = Source(file=source, env=os.environ if env is None else env)
    root = compose(text, src)
    fmt = detect_format(root)
    # Imported here, not at the top: the front ends import the traffic and resilience
    # modules, which import the model through this package; importing
    # ``nodeproxy.config.model`` must not pull the whole loader in (an import cycle).
    from nodeproxy.config.envoy import load_envoy
    from nodeproxy.config.loader import load_native
    from nodeproxy.config.route_actions import check_rules

    config = load_native(root) if fmt == "native" else load_envoy(root)
    check_rules(config)  # route actions, as the router compiles them (either format)
    if src.expanded:  # what came from the environment stays out of /config_dump
        config = dataclasses.replace(config, env_values=frozenset(src.expanded))
    return config


def detect_format(root: Node) -> str:
    """``"native"`` or ``"envoy"`` from the top-level keys; ConfigError when neither."""
    if not isinstance(root.node, yaml.MappingNode):
        raise root.error("expected a mapping at the top level (native services: or Envoy)")
    keys = {str(k.value): v for k, v in root.node.value if isinstance(k, yaml.ScalarNode)}
    if "services" in keys or "discovery" in keys:
        if "static_resources" in keys:
            raise root.error(
                "both services (native) and static_resources (Envoy): use one format per file"
            )
        return "native"
    if "static_resources" in keys:
        return "envoy"
    admin = keys.get("admin")
    if isinstance(admin, yaml.MappingNode):
        for k, v in admin.value:
            if k.value == "address" and isinstance(v, yaml.MappingNode):
                return "envoy"
    raise root.error(
        "not a nodeproxy config: expected services: (native format) "
        "or static_resources: (Envoy bootstrap)"
    )
