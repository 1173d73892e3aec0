"""Values as Envoy reads them, and the context one Envoy document is read in.

Envoy turns YAML into protobuf through the JSON mapping, and that mapping is
forgiving: enum values in any case (``case_insensitive_enum_parsing``),
64-bit integers and wrapped numbers written as strings (``"5"``), durations
as ``"0.25s"`` or ``{seconds, nanos}``, an extension resolved by its
well-known ``name`` when ``typed_config`` is empty (``typed_config: {}``) or
by its ``@type`` whatever the name (a ``TypedStruct`` says its type in
``type_url``). Every reader here accepts what Envoy accepts, so a file that
runs under Envoy is never refused for its spelling.

``EnvoyLoad`` carries what the readers share: the warnings for fields that
change nothing nodeproxy does (one line per field, however often it appears;
``Config.warnings``) and the clusters read so far.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from nodeproxy.config.checks import check_regex
from nodeproxy.config.envoy_ignored import NO_WARNING
from nodeproxy.config.model import ClusterConfig
from nodeproxy.config.yamlsrc import Fields, Node

DOCS = "docs/configuration.md, 'Envoy bootstrap'"
UNSUPPORTED = f"unsupported field: nodeproxy does not implement it (see {DOCS})"
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NULL = "tag:yaml.org,2002:null"
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


class EnvoyNode(Node):
    """A ``Node`` read as protobuf's JSON parser (Envoy's loader) reads it: one value
    where a list is expected is a list of one (``listeners: {address: ...}``), and a
    field written with no value (``typed_config:``) is a field not set."""

    __slots__ = ()

    @classmethod
    def of(cls, node: Node) -> EnvoyNode:
        return cls(node.node, node.path, node.source)

    def child(self, node: yaml.Node, key: str | int) -> Node:
        return EnvoyNode.of(super().child(node, key))

    def items(self, *, non_empty: bool = False) -> list[Node]:
        single = isinstance(self.node, yaml.MappingNode) or (
            isinstance(self.node, yaml.ScalarNode) and self.node.tag != _NULL
        )
        return [self] if single else super().items(non_empty=non_empty)

    def fields(self, *allowed: str, unknown: str = "unknown field") -> Fields:
        f = super().fields(*allowed, unknown=unknown)
        present = {key: value for key in allowed if (value := f.get(key)) is not None}
        return Fields(self, {k: v for k, v in present.items() if v.node.tag != _NULL})


@dataclass
class EnvoyLoad:
    """What the readers of one Envoy document share."""

    clusters: dict[str, ClusterConfig] = field(default_factory=dict)
    dns_clusters: set[str] = field(default_factory=set)  # STRICT_DNS and LOGICAL_DNS ones
    local_ratelimit_filter: bool = False  # the listener being read has that HTTP filter
    cors_filter: bool = False  # ... and envoy.filters.http.cors (envoy_cors.py)
    # cluster name -> (budget ratio, min retry concurrency) from circuit_breakers.retry_budget
    retry_budgets: dict[str, tuple[float, int]] = field(default_factory=dict)
    limits: dict[str, tuple[float, Node]] = field(default_factory=dict)  # Limits overrides
    _ignored: dict[tuple[str, str], list[Node]] = field(default_factory=dict)

    def limit(self, name: str, value: float, node: Node) -> None:
        """A process-wide ``Limits`` value a listener asks for; listeners must agree."""
        if (seen := self.limits.get(name)) is not None and seen[0] != value:
            raise node.error(
                f"{value:g} here but {seen[0]:g} at {seen[1].path}: nodeproxy applies "
                f"limits.{name} to every listener"
            )
        self.limits[name] = (value, node)

    def ignore(self, node: Node, why: str) -> None:
        """Record a field that is accepted and changes nothing nodeproxy does."""
        key = (node.path.rsplit(".", 1)[-1].split("[")[0], why)
        self._ignored.setdefault(key, []).append(node)

    def warnings(self) -> tuple[str, ...]:
        """One line per (field, reason), in the order of the file."""
        out = []
        for (_, why), nodes in self._ignored.items():
            first = min(nodes, key=lambda n: n.line)
            more = f" (and {len(nodes) - 1} more)" if len(nodes) > 1 else ""
            out.append((first.line, f"{first.path} (line {first.line}){more}: ignored: {why}"))
        return tuple(line for _, line in sorted(out))

    def fields(self, node: Node, *allowed: str, ignored: Mapping[str, str] = {}) -> Fields:
        """``node.fields(...)`` where the keys of ``ignored`` are also accepted, each with
        a warning giving its reason; any other key is refused by name."""
        f = node.fields(*allowed, *ignored, unknown=UNSUPPORTED)
        for key, why in ignored.items():
            if (value := f.get(key)) is not None and not why.startswith(NO_WARNING):
                self.ignore(value, why)
        return f


def common_http_protocol_options(ctx: EnvoyLoad, node: Node) -> float | None:
    """``HttpProtocolOptions`` (a connection manager's or a cluster's) -> its idle timeout
    (``math.inf`` for Envoy's 0, "disabled"), None when not set."""
    f = ctx.fields(
        node, "idle_timeout", "max_connection_duration", "max_stream_duration",
        "headers_with_underscores_action",
        ignored={
            "max_headers_count": "nodeproxy bounds headers by size "
            "(limits.max_request_header_bytes), not by count",
            "max_requests_per_connection": "connections are reused until their idle timeout",
        },
    )  # fmt: skip
    for key in ("max_connection_duration", "max_stream_duration"):
        if (n := f.get(key)) is not None and duration(n, allow_zero=True):
            raise n.error(f"{key} is not supported (only 0, Envoy's default)")
    f.opt("headers_with_underscores_action", lambda n: enum(n, "ALLOW"), "ALLOW")
    idle = f.opt("idle_timeout", lambda n: duration(n, allow_zero=True), None)
    return math.inf if idle == 0 else idle


def enum(node: Node, *options: str) -> str:
    """An enum value in any case -> its canonical (upper-case) name."""
    value = node.text()
    if value.upper() not in options:
        raise node.error(f"unsupported value {value!r} (supported: {', '.join(options)})")
    return value.upper()


def duration(node: Node, *, allow_zero: bool = False) -> float:
    """A protobuf Duration: ``"0.25s"`` (or any nodeproxy duration) or ``{seconds, nanos}``."""
    if not node.is_map():
        return node.duration(allow_zero=allow_zero)
    f = node.fields("seconds", "nanos", unknown=UNSUPPORTED)
    seconds = f.opt("seconds", lambda n: n.integer(0), 0)
    nanos = f.opt("nanos", lambda n: n.integer(0, 999_999_999), 0)
    total = seconds + nanos / 1e9
    if total == 0 and not allow_zero:
        raise node.error("must be > 0")
    return total


def integer(node: Node, minimum: int = 0, maximum: int | None = None) -> int:
    """A (u)int32/64 or a wrapped one: a number, or a number written as a string."""
    return node.integer(minimum, maximum)


def number(node: Node, minimum: float = 0.0, maximum: float | None = None) -> float:
    """A double: ``1``, ``0.5``, ``"1e3"``."""
    text = node.text()
    if not _NUMBER.fullmatch(text):
        raise node.error(f"expected a number, got {text!r}")
    value = float(text)
    if value < minimum or (maximum is not None and value > maximum):
        top = "" if maximum is None else f" and <= {maximum:g}"
        raise node.error(f"must be >= {minimum:g}{top}, got {text}")
    return value


def percent(node: Node) -> float:
    """``envoy.type.v3.Percent`` (``{value: 12.5}``) or a plain number, 0..100."""
    if node.is_map():
        return number(node.fields("value", unknown=UNSUPPORTED).need("value"), 0.0, 100.0)
    return number(node, 0.0, 100.0)


def fraction(node: Node) -> float:
    """``FractionalPercent`` ``{numerator, denominator: HUNDRED|TEN_THOUSAND|MILLION}``
    (or a ``RuntimeFractionalPercent``'s ``default_value``) -> a share in 0..1."""
    f = node.fields("numerator", "denominator", "default_value", "runtime_key", unknown=UNSUPPORTED)
    if (inner := f.get("default_value")) is not None:
        f.opt("runtime_key", Node.text, "")  # no runtime: the default is the value
        return fraction(inner)
    numerator = f.opt("numerator", integer, 0)
    denominator = _DENOMINATORS[f.opt("denominator", lambda n: enum(n, *_DENOMINATORS), "HUNDRED")]
    return min(1.0, numerator / denominator)


def regex(node: Node) -> str:
    """A ``RegexMatcher`` (``{regex, google_re2: {...}}``) -> a checked pattern."""
    f = node.fields("regex", "google_re2", unknown=UNSUPPORTED)
    f.opt("google_re2", lambda n: n.fields("max_program_size", unknown=UNSUPPORTED), None)
    pattern = f.need("regex")
    return check_regex(pattern, pattern.text(non_empty=False))


def string_matcher(node: Node) -> tuple[str, str]:
    """A ``StringMatcher`` -> ("exact" | "prefix" | "regex", value), suffix, contains and
    ``ignore_case`` written as the regex Envoy's matching is equivalent to."""
    keys = ("exact", "prefix", "suffix", "contains", "safe_regex")
    f = node.fields(*keys, "ignore_case", unknown=UNSUPPORTED)
    kind, value = f.one_of(*keys)
    ignore_case = f.opt("ignore_case", Node.flag, False)
    if kind == "safe_regex":
        if ignore_case:
            raise f.need("ignore_case").error("ignore_case does not apply to safe_regex")
        return "regex", regex(value)
    return matcher(kind, value.text(non_empty=False), ignore_case=ignore_case)


def matcher(kind: str, text: str, *, ignore_case: bool = False) -> tuple[str, str]:
    """(kind, text) of a string condition -> ("exact" | "prefix" | "regex", value)."""
    if kind in ("exact", "prefix") and not ignore_case:
        return kind, text
    body = re.escape(text)
    pattern = {"exact": body, "prefix": body + ".*", "suffix": ".*" + body}.get(
        kind, ".*" + body + ".*"
    )
    return "regex", ("(?is)" if ignore_case else "(?s)") + pattern


def type_name(url: str) -> str:
    """``type.googleapis.com/envoy.x.v3.Y`` -> ``envoy.x.v3.Y``."""
    return url.rsplit("/", 1)[-1]


TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")


def extension(
    node: Node,
    kinds: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
    what: str,
    *extra: str,
) -> tuple[str, Node | None, Fields]:
    """A ``{name, typed_config | config}`` entry -> (kind, its config or None, the entry).

    ``kinds`` maps each kind to (well-known names, protobuf type names). The
    ``@type`` decides when there is one (any name then); otherwise the name
    does (``typed_config: {}``, v2 ``config:``, or no config at all).
    """
    f = node.fields(
        "name", "typed_config", "config", "disabled", "is_optional", *extra, unknown=UNSUPPORTED
    )
    if "typed_config" in f and "config" in f:
        raise node.error("use typed_config or config, not both")
    cfg = f.get("typed_config") or f.get("config")
    type_url = None
    if cfg is not None and cfg.is_map() and "@type" in cfg.entries():
        at = cfg.entries()["@type"]
        type_url = type_name(at.text())
        if type_url in TYPED_STRUCTS:
            ts = cfg.fields("@type", "type_url", "value", unknown=UNSUPPORTED)
            type_url, cfg = type_name(ts.need("type_url").text()), ts.get("value")
        for kind, (_, types) in kinds.items():
            if type_url in types:
                return kind, cfg, f
        raise at.error(f"unsupported {what} type {type_url!r} ({_supported(kinds)})")
    name = f.opt("name", Node.text, "")
    for kind, (names, _) in kinds.items():
        if name in names:
            return kind, cfg, f
    where = f.get("name") or node
    raise where.error(f"unsupported {what} {name!r} ({_supported(kinds)})")


def _supported(kinds: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> str:
    return "supported: " + ", ".join(names[-1] for names, _ in kinds.values())
