"""A native route's ``cors:`` -> ``CorsPolicy`` (docs/configuration.md, routes).

Why a file of its own: the native spelling is lists where Envoy's is
comma-joined strings, and an origin is a plain string (exact; ``*`` for any)
or one condition (``exact``/``prefix``/``suffix``/``contains``/``regex``,
``ignore_case``) written as Envoy's ``StringMatcher`` would be. The policy
is checked by ``routing/cors.py``'s ``check_policy``, the data path's module.
"""

from __future__ import annotations

import yaml

from nodeproxy.config.checks import check_regex
from nodeproxy.config.envoy_values import matcher
from nodeproxy.config.model import CorsPolicy
from nodeproxy.config.yamlsrc import Node
from nodeproxy.routing.cors import check_policy

KEYS = (
    "allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age",
    "allow_credentials", "forward_not_matching_preflights",
)  # fmt: skip
_KINDS = ("exact", "prefix", "suffix", "contains", "regex")


def read_cors(node: Node) -> CorsPolicy:
    """``{allow_origins, allow_methods, allow_headers, expose_headers, max_age,
    allow_credentials, forward_not_matching_preflights}``; ``allow_origins`` required."""
    f = node.fields(*KEYS)
    origins = tuple(_origin(o) for o in f.need("allow_origins").items(non_empty=True))
    max_age = f.opt("max_age", lambda n: n.integer(0), None)
    policy = CorsPolicy(
        origins=origins,
        allow_methods=f.opt("allow_methods", _joined, ""),
        allow_headers=f.opt("allow_headers", _joined, ""),
        expose_headers=f.opt("expose_headers", _joined, ""),
        max_age="" if max_age is None else str(max_age),
        allow_credentials=f.opt("allow_credentials", Node.flag, None),
        forward_not_matching_preflights=f.opt("forward_not_matching_preflights", Node.flag, True),
    )
    try:
        return check_policy(policy)
    except ValueError as exc:
        raise node.error(str(exc)) from None


def _origin(node: Node) -> tuple[str, str]:
    if not node.is_map():
        return "exact", node.text()
    f = node.fields(*_KINDS, "ignore_case")
    kind, value = f.one_of(*_KINDS)
    ignore_case = f.opt("ignore_case", Node.flag, False)
    if kind == "regex":
        pattern = check_regex(value, value.text())
        return "regex", f"(?i){pattern}" if ignore_case else pattern
    return matcher(kind, value.text(), ignore_case=ignore_case)


def _joined(node: Node) -> str:
    """A list of tokens (or one string, as written) -> Envoy's comma-joined value."""
    if node.is_map():
        raise node.error("expected a list of names or one string")
    if isinstance(node.node, yaml.SequenceNode):
        return ",".join(item.text() for item in node.items(non_empty=True))
    return node.text()
