"""YAML nodes that remember where they came from.

Both config front ends read the file through ``yaml.compose`` (SafeLoader)
rather than ``yaml.safe_load``: the composed node tree keeps each value's
line, so every ``ConfigError`` can name the dotted field path *and* the line
the operator has to fix. ``Node`` wraps one YAML node with its path; its
typed accessors (``text``, ``integer``, ``duration``, ``address``...) convert
and validate in one step and raise a ``ConfigError`` naming that node.
``Node.fields(...)`` declares the keys a mapping may have, so an unknown or
misspelt key is always an error, never silently ignored.

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment in every
string scalar, before any conversion (so ``port: ${PORT:-8080}`` works).
Each expansion is remembered in ``Source.expanded`` (the whole expanded value
and each substituted piece): the environment is where deployments put
tokens, so ``/config_dump`` hides those strings (``Config.env_values``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor

from nodeproxy.config.checks import check_host, check_port, parse_duration
from nodeproxy.errors import ConfigError

T = TypeVar("T")
_TAG = "tag:yaml.org,2002:"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Source:
    """Where the document came from and the environment used for ``${VAR}``.

    ``expanded`` collects, while the document is read, every string that came
    from an expansion (the scalar as expanded, and each substituted value).
    """

    file: str
    env: Mapping[str, str]
    expanded: set[str] = field(default_factory=set, compare=False, repr=False)


def compose(text: str, source: Source) -> Node:
    """Parse one YAML document into a root ``Node``; syntax errors become ConfigErrors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError("<yaml>", f"invalid YAML: {exc.problem}", line, source.file) from None
    except yaml.YAMLError as exc:
        raise ConfigError("<yaml>", f"invalid YAML: {exc}", None, source.file) from None
    if root is None:
        raise ConfigError("<root>", "the file is empty", 1, source.file)
    return Node(root, "", source)


class Node:
    """One YAML value plus its field path (``services[0].endpoints[1]``)."""

    __slots__ = ("node", "path", "source")

    def __init__(self, node: yaml.Node, path: str, source: Source) -> None:
        self.node = node
        self.path = path
        self.source = source

    def __repr__(self) -> str:
        return f"<Node {self.path or '<root>'} line {self.line}>"

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.path or "<root>", message, self.line, self.source.file)

    def child(self, node: yaml.Node, key: str | int) -> Node:
        if isinstance(key, int):
            return Node(node, f"{self.path}[{key}]", self.source)
        return Node(node, f"{self.path}.{key}" if self.path else key, self.source)

    # -- shape -----------------------------------------------------------------

    def is_map(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    def is_scalar(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode)

    def fields(self, *allowed: str, unknown: str = "unknown field") -> Fields:
        """This mapping's entries; a key outside ``allowed`` is an error naming it."""
        entries: dict[str, Node] = {}
        for key, key_node, value in self._pairs():
            if key not in allowed:
                raise Node(key_node, value.path, self.source).error(unknown)
            entries[key] = value
        return Fields(self, entries)

    def entries(self) -> dict[str, Node]:
        """A free-form mapping (e.g. labels): every key, duplicates rejected."""
        return {key: value for key, _, value in self._pairs()}

    def _pairs(self) -> list[tuple[str, yaml.Node, Node]]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected a mapping, got {self._kind()}")
        SafeConstructor().flatten_mapping(self.node)  # resolve "<<: *anchor" merges
        pairs: list[tuple[str, yaml.Node, Node]] = []
        seen: set[str] = set()
        for key_node, value_node in self.node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error("mapping keys must be plain strings")
            key = str(key_node.value)
            value = self.child(value_node, key)
            if key in seen:
                raise Node(key_node, value.path, self.source).error("duplicate key")
            seen.add(key)
            pairs.append((key, key_node, value))
        return pairs

    def items(self, *, non_empty: bool = False) -> list[Node]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, got {self._kind()}")
        if non_empty and not self.node.value:
            raise self.error("must not be empty")
        return [self.child(n, i) for i, n in enumerate(self.node.value)]

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        tag = str(self.node.tag).removeprefix(_TAG)
        return "null (empty value)" if tag == "null" else f"{tag} {self.node.value!r}"

    # -- scalars ---------------------------------------------------------------

    def _scalar(self) -> str:
        node = self.node
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got {self._kind()}")
        if node.tag == _TAG + "null":
            raise self.error("must not be empty")
        if node.tag not in (_TAG + t for t in ("str", "int", "float", "bool", "timestamp")):
            raise self.error(f"unsupported YAML tag {node.tag}")
        value = str(node.value)
        return self._expand(value) if node.tag == _TAG + "str" else value

    def _expand(self, value: str) -> str:
        pieces: list[str] = []

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = self.source.env.get(name)
            if default is not None:  # shell semantics: unset or empty -> default
                got = got or default
            if got is None:
                raise self.error(
                    f"environment variable {name} is not set (use ${{{name}:-default}})"
                )
            pieces.append(got)
            return got

        expanded = _ENV.sub(sub, value)
        if "${" in _ENV.sub("", value):
            raise self.error(f"malformed ${{...}} in {value!r}")
        if pieces:
            self.source.expanded.update(p for p in (expanded, *pieces) if p)
        return expanded

    def text(self, *, non_empty: bool = True) -> str:
        """A string (numbers and booleans as written); ``${VAR}`` expanded."""
        value = self._scalar()
        if non_empty and not value:
            raise self.error("must not be empty")
        return value

    def choice(self, *options: str) -> str:
        value = self.text()
        if value not in options:
            raise self.error(f"unsupported value {value!r} (expected one of: {', '.join(options)})")
        return value

    def flag(self) -> bool:
        value = self._scalar().lower()
        if value in ("true", "yes", "on"):
            return True
        if value in ("false", "no", "off"):
            return False
        raise self.error(f"expected true or false, got {value!r}")

    def integer(self, minimum: int = 1, maximum: int | None = None) -> int:
        value = self._scalar()
        if isinstance(self.node, yaml.ScalarNode) and self.node.tag == _TAG + "int":
            number = int(SafeConstructor().construct_yaml_int(self.node))
        elif re.fullmatch(r"[+-]?[0-9]+", value):
            number = int(value)
        else:
            raise self.error(f"expected an integer, got {value!r}")
        if number < minimum:
            raise self.error(f"must be >= {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise self.error(f"must be <= {maximum}, got {number}")
        return number

    def duration(self, *, allow_zero: bool = False) -> float:
        """``"250ms"``, ``"10s"``, ``"1.5s"``, ``"1m30s"``, ``"1h"`` or a number of seconds."""
        seconds = parse_duration(self._scalar())
        if seconds is None:
            raise self.error(
                f"invalid duration {self._scalar()!r} (use e.g. 250ms, 10s, 1.5s, 1m, 1h)"
            )
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise self.error(f"must be {'>= 0' if allow_zero else '> 0'}, got {self._scalar()!r}")
        return seconds

    def host(self) -> str:
        """A hostname or IP literal (IPv6 without brackets)."""
        return check_host(self, self.text())

    def address(self, *, allow_zero_port: bool = False) -> tuple[str, int]:
        """``host:port`` or ``[v6]:port`` -> (host, port)."""
        value = self.text()
        m = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)|([^:\[\]]+):([0-9]+)", value)
        if m is None:
            raise self.error(f"expected host:port or [ipv6]:port, got {value!r}")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if m.group(1) is not None:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise self.error(f"invalid IPv6 address {host!r}") from None
        check_port(self, port, allow_zero=allow_zero_port)
        host = check_host(self, host)
        if _ENV.fullmatch(str(self.node.value)):  # the whole address is one ${VAR}: so is its host
            self.source.expanded.add(host)
        return host, port


class Fields:
    """The entries of one mapping, by key, after unknown keys were rejected."""

    def __init__(self, owner: Node, entries: dict[str, Node]) -> None:
        self.owner = owner
        self._entries = entries

    def __repr__(self) -> str:
        return f"<Fields {self.owner.path or '<root>'}: {', '.join(self._entries)}>"

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Node | None:
        return self._entries.get(key)

    def items(self, key: str) -> list[Node]:
        """The list under ``key``; an absent key is an empty list."""
        node = self._entries.get(key)
        return [] if node is None else node.items()

    def opt(self, key: str, read: Callable[[Node], T], default: T) -> T:
        """``read(node)`` when ``key`` is present, else ``default``."""
        node = self._entries.get(key)
        return default if node is None else read(node)

    def need(self, key: str) -> Node:
        node = self._entries.get(key)
        if node is None:
            raise self.owner.error(f"missing required field {key!r}")
        return node

    def one_of(self, *keys: str) -> tuple[str, Node]:
        """Exactly one of ``keys`` must be present."""
        present = [k for k in keys if k in self._entries]
        if len(present) != 1:
            found = f"found {', '.join(present)}" if present else "found none"
            raise self.owner.error(f"needs exactly one of {', '.join(keys)} ({found})")
        return present[0], self._entries[present[0]]
