"""``/config_dump``: the effective configuration as JSON, with secrets redacted.

Why: after ``${ENV}`` expansion, defaults and the Envoy translation, what the
proxy runs is not what the operator wrote; the dump shows the frozen
``Config`` exactly. It is served to anyone who can reach the admin port, so
what may be private is replaced by ``[redacted]``:

- a dataclass field or mapping key whose name contains one of the words in
  ``SENSITIVE_WORDS`` (matched per word of the name, so ``api_key``,
  ``clientSecret``, ``x-auth-token`` match and ``keepalive`` or ``monkey``
  do not). Always: these name credentials.
- every string that came from ``${VAR}`` / ``${VAR:-default}`` expansion
  (``Config.env_values``: the expanded scalar and each substituted value,
  compared case-insensitively; a value of 8 characters or more is also
  hidden inside longer strings). The environment is where deployments put
  tokens, and a value cannot be traced once it is copied into derived fields,
  so every string equal to one is hidden. Numbers and booleans are shown.
- the match values (``exact``, ``prefix``, ``regex``) of every header
  condition: routes match on session ids, tenant keys and bearer tokens.

``Redaction(include_sensitive=True)`` (``?include_sensitive=1``, loopback
only) shows the last two; names that look like credentials stay hidden.
Mapping keys whose value is a whole config object (cluster names) are names,
not secrets, and are kept unless they came from the environment.
Non-finite floats become strings (JSON has none).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeproxy import compiled
from nodeproxy.config.model import Config, HeaderMatch
from nodeproxy.http1 import impl

REDACTED = "[redacted]"

SENSITIVE_WORDS = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwords",
        "passwd",
        "credential",
        "credentials",
        "authorization",
        "cookie",
    }
)
# Fields of a header condition that carry the header's expected value.
_MATCH_VALUE_FIELDS = ("exact", "prefix", "regex")
# An environment value this long is hidden inside longer strings too (a token in a URL).
MIN_EMBEDDED = 8

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-zA-Z0-9]+")


def name_words(name: str) -> list[str]:
    """``clientSecret`` -> ``["client", "secret"]``; ``x-api-key`` -> ``["x", "api", "key"]``."""
    return [w.lower() for w in _SPLIT.split(_CAMEL.sub("_", name)) if w]


def is_sensitive(name: str) -> bool:
    """True when a field, key or header name looks like it holds a credential."""
    return any(w in SENSITIVE_WORDS for w in name_words(name))


def _redact_value(value: Any) -> Any:
    return None if value is None else REDACTED


@dataclass(frozen=True)
class Redaction:
    """What to hide besides credential-named fields (see the module docstring)."""

    env_values: frozenset[str] = frozenset()
    include_sensitive: bool = False

    @classmethod
    def for_config(cls, config: Config, *, include_sensitive: bool = False) -> Redaction:
        values = frozenset(v.casefold() for v in config.env_values)
        return cls(frozenset() if include_sensitive else values, include_sensitive)

    def hides(self, text: str) -> bool:
        """True when ``text`` is (or, for a long value, contains) a value from ``${VAR}``."""
        if not self.env_values:
            return False
        folded = text.casefold()
        return folded in self.env_values or any(
            len(v) >= MIN_EMBEDDED and v in folded for v in self.env_values
        )


NO_ENV = Redaction()


def to_jsonable(obj: Any, redaction: Redaction = NO_ENV) -> Any:
    """Dataclasses -> dicts, mappings -> dicts, tuples -> lists, secrets redacted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        header_name = getattr(obj, "name", None)
        matcher = isinstance(obj, HeaderMatch) and not redaction.include_sensitive
        sensitive_header = (
            isinstance(header_name, str)
            and all(hasattr(obj, f) for f in _MATCH_VALUE_FIELDS)
            and is_sensitive(header_name)
        )
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            hidden_match = (matcher or sensitive_header) and f.name in _MATCH_VALUE_FIELDS
            if is_sensitive(f.name) or hidden_match:
                out[f.name] = _redact_value(value)
            else:
                out[f.name] = to_jsonable(value, redaction)
        return out
    if isinstance(obj, Mapping):
        result: dict[str, Any] = {}
        for k, v in obj.items():
            key = str(k)
            is_object = dataclasses.is_dataclass(v)
            value = REDACTED if not is_object and is_sensitive(key) else to_jsonable(v, redaction)
            if redaction.hides(key):
                key = _free_key(result, REDACTED)
            result[key] = value
        return result
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v, redaction) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "+Inf" if obj > 0 else ("-Inf" if obj < 0 else "NaN")
    if isinstance(obj, str):
        return REDACTED if redaction.hides(obj) else obj
    if obj is None or isinstance(obj, int | float | bool):
        return obj
    text = str(obj)
    return REDACTED if redaction.hides(text) else text


def _free_key(taken: Mapping[str, Any], base: str) -> str:
    """``[redacted]``, then ``[redacted] 2``...: two hidden keys must not overwrite each other."""
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base} {n}"
    return key


def config_dump(config: Config, *, include_sensitive: bool = False) -> dict[str, Any]:
    """The effective config as a redacted JSON-ready dict (``env_values`` never shown)."""
    redaction = Redaction.for_config(config, include_sensitive=include_sensitive)
    dumped = to_jsonable(config, redaction)
    assert isinstance(dumped, dict)
    dumped.pop("env_values", None)
    dumped["codec"] = {"configured": config.codec, "running": impl.NAME, "version": impl.VERSION}
    dumped["data_path"] = compiled.status()  # compiled by mypyc, or interpreted
    return dumped
