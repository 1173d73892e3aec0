"""``/config_dump``: the effective configuration as JSON, with secrets redacted.

Why: after ``${ENV}`` expansion, defaults and the Envoy translation, what the
proxy runs is not what the operator wrote; the dump shows the frozen
``Config`` exactly. It is served to anyone who can reach the admin port, so
anything that looks like a credential is replaced by ``[redacted]``:

- a dataclass field or mapping key whose name contains one of the words in
  ``SENSITIVE_WORDS`` (matched per word of the name, so ``api_key``,
  ``clientSecret``, ``x-auth-token`` match and ``keepalive`` or ``monkey``
  do not);
- the match values of a header condition on a sensitive header
  (``authorization``, ``cookie``, ``x-api-key``...): a route matching
  ``authorization: Bearer abc`` would otherwise print the token.

Mapping keys whose value is a whole config object (cluster names) are names,
not secrets, and are kept. Non-finite floats become strings (JSON has none).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

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


def to_jsonable(obj: Any) -> Any:
    """Dataclasses -> dicts, mappings -> dicts, tuples -> lists, secrets redacted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        header_name = getattr(obj, "name", None)
        sensitive_header = (
            isinstance(header_name, str)
            and all(hasattr(obj, f) for f in _MATCH_VALUE_FIELDS)
            and is_sensitive(header_name)
        )
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if is_sensitive(f.name) or (sensitive_header and f.name in _MATCH_VALUE_FIELDS):
                out[f.name] = _redact_value(value)
            else:
                out[f.name] = to_jsonable(value)
        return out
    if isinstance(obj, Mapping):
        result: dict[str, Any] = {}
        for k, v in obj.items():
            key = str(k)
            is_object = dataclasses.is_dataclass(v)
            result[key] = REDACTED if not is_object and is_sensitive(key) else to_jsonable(v)
        return result
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "+Inf" if obj > 0 else ("-Inf" if obj < 0 else "NaN")
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def config_dump(config: Any) -> dict[str, Any]:
    """The effective config (a ``Config``) as a redacted JSON-ready dict."""
    dumped = to_jsonable(config)
    assert isinstance(dumped, dict)
    return dumped
