"""The reflector's state, with no I/O: what one list+watch knows and how events change it.

client-go's reflector semantics, as plain synchronous code:

- the cache holds each object's *projection* (``project.py``: the few fields
  translation reads), keyed ``namespace/name``; the decoded dict is dropped;
- a *list* replaces the whole cache at once and sets ``resource_version`` from
  the list's ``metadata.resourceVersion`` (pages are gathered first, so a
  half-read list is never visible); a record equal to the one cached keeps
  the cached object, so translation sees it unchanged;
- each *watch event* applies to the cache: ``ADDED``/``MODIFIED`` store the
  record, ``DELETED`` drops it, and each moves ``resource_version`` to the
  object's own version; ``BOOKMARK`` moves only the version, and so does a
  ``MODIFIED`` whose record did not change (a Node's status heartbeat);
- an ``ERROR`` event carries a ``Status``: code 410 means the version is too
  old and the caller must list again (``Outcome.GONE``); 504 "Too large
  resource version" means the API is *behind* the version asked for -- an etcd
  restore rolled it back -- and the caller must list again too
  (``Outcome.TOO_LARGE``, client-go's ``isTooLargeResourceVersionError``); any
  other error means reconnect (``Outcome.ERROR``);
- an event whose version is not newer than the cache's (a bookmark: older)
  comes from a rolled-back API that accepted the watch anyway: nothing is
  applied and the caller lists again (``Outcome.ROLLBACK``).

Resource versions are opaque strings, as the API demands; they are compared
only to notice a rollback, and only when both are decimal numbers (etcd's). ``LineBuffer`` splits
a watch body into newline-delimited JSON events with a cap on one line, and
``Backoff`` is the capped, jittered exponential delay (pure math; the shell sleeps).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

Obj = dict[str, Any]

# -- metric names (the admin stats page renders them like any other) ----------
# reason: initial | gone (410) | too_large (504, rolled back) | rollback (versions went back)
K8S_RELISTS = "nodeproxy_k8s_relists_total"  # {resource, reason}
K8S_WATCH_RESTARTS = "nodeproxy_k8s_watch_restarts_total"  # {resource, reason=timeout|error|...}
K8S_EVENTS = "nodeproxy_k8s_watch_events_total"  # {resource, type}
K8S_SYNCED = "nodeproxy_k8s_synced"  # gauge {resource}: 1 after the first list
K8S_PUBLISHES = "nodeproxy_k8s_snapshots_published_total"

K8S_HELP: dict[str, str] = {
    K8S_RELISTS: "Complete lists of a Kubernetes resource (initial, after 410 Gone, after a "
    "rollback of the API's resource versions).",
    K8S_WATCH_RESTARTS: "Kubernetes watches started again, by reason.",
    K8S_EVENTS: "Kubernetes watch events received, by resource and type.",
    K8S_SYNCED: "1 once the resource has been listed completely.",
    K8S_PUBLISHES: "Endpoint snapshots published from Kubernetes state.",
}


class WatchProtocolError(Exception):
    """An event or list body that is not what the API sends."""


class Outcome(enum.Enum):
    APPLIED = "applied"  # the cache changed (or was rewritten)
    BOOKMARK = "bookmark"  # only the version moved
    UNCHANGED = "unchanged"  # an object changed in nothing we keep: only the version moved
    GONE = "gone"  # 410: list again
    TOO_LARGE = "too_large"  # 504 Too large resource version: the API went back; list again
    ROLLBACK = "rollback"  # an event older than the cache: the API went back; list again
    ERROR = "error"  # another error event: reconnect


RELIST = frozenset({Outcome.GONE, Outcome.TOO_LARGE, Outcome.ROLLBACK})


def too_large_status(doc: Any) -> bool:
    """A ``Status`` saying the requested resourceVersion is newer than the API's.

    The cause ``ResourceVersionTooLarge`` (Kubernetes >= 1.18.6), or a 504
    whose cause or message reads "Too large resource version" (older servers),
    exactly as client-go's ``isTooLargeResourceVersionError`` decides.
    """
    if not isinstance(doc, dict):
        return False
    details = doc.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("reason") == "ResourceVersionTooLarge":
            return True
    if doc.get("code") != 504:
        return False
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("message") == "Too large resource version":
            return True
    return "Too large resource version" in str(doc.get("message", ""))


def _older(new: str, old: str, or_equal: bool) -> bool:
    """``new`` comes before ``old`` (both etcd revisions; opaque versions never do)."""
    if not (new.isdigit() and old.isdigit()):
        return False
    return int(new) <= int(old) if or_equal else int(new) < int(old)


@dataclass(frozen=True)
class Resource:
    """One collection to list and watch, cluster-wide (or narrowed by selectors)."""

    name: str  # the RBAC resource name: "endpointslices"
    group: str  # API group, "" for the core group (RBAC apiGroups)
    path: str  # collection path: "/apis/discovery.k8s.io/v1/endpointslices"
    label_selector: str = ""
    field_selector: str = ""

    def _query(self, **extra: str) -> str:
        params = {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}
        params.update(extra)
        return urlencode({k: v for k, v in params.items() if v})

    def list_target(self, limit: int, cont: str = "") -> str:
        return f"{self.path}?{self._query(limit=str(limit), **{'continue': cont})}"

    def watch_target(self, resource_version: str, timeout_seconds: int) -> str:
        query = self._query(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_seconds),
        )
        return f"{self.path}?{query}"


def object_key(obj: Any) -> str:
    """``namespace/name`` (``name`` for cluster-scoped objects), as client-go keys them."""
    if not isinstance(obj, dict):
        raise WatchProtocolError("an item that is not an object")
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name")
    if not isinstance(name, str) or not name:
        raise WatchProtocolError("object without metadata.name")
    return f"{ns}/{name}" if ns else name


def _version(obj: Mapping[str, Any]) -> str:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise WatchProtocolError("object without metadata.resourceVersion")
    return rv


def keep_whole(obj: Obj) -> object:
    return obj


@dataclass
class Store:
    """The cache of one resource; owned by its reflector task, read by the translator."""

    resource: str
    project: Callable[[Obj], object] = field(default=keep_whole, repr=False)
    objects: dict[str, Any] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set, repr=False)  # keys since the last drain
    resource_version: str = ""
    synced: bool = False  # a complete list has been applied at least once

    def __repr__(self) -> str:
        state = "synced" if self.synced else "not synced"
        return (
            f"<Store {self.resource} [{len(self.objects)} objects, "
            f"version {self.resource_version or '-'}, {state}]>"
        )

    def entry(self, obj: Any) -> tuple[str, object]:
        """(key, record) of one listed object: the dict itself is not kept, and a record
        equal to the cached one is the cached one (the new copy dies at once)."""
        key, record = object_key(obj), self.project(obj)
        cached = self.objects.get(key)
        return key, cached if cached == record else record

    def replace(self, entries: Iterable[tuple[str, object]], resource_version: str) -> None:
        """Apply a complete list of ``entry`` pairs: they replace the old contents at once."""
        old, self.objects = self.objects, dict(entries)
        self.changed.update(k for k, v in self.objects.items() if old.get(k) is not v)
        self.changed.update(k for k in old if k not in self.objects)
        self.resource_version = resource_version
        self.synced = True

    def apply(self, event: Mapping[str, Any]) -> Outcome:
        """Apply one watch event (already decoded from JSON)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise WatchProtocolError(f"{kind} event without an object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                return Outcome.GONE
            return Outcome.TOO_LARGE if too_large_status(obj) else Outcome.ERROR
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise WatchProtocolError(f"unknown watch event type {kind!r}")
        version = _version(obj)
        # one watch's events are strictly newer than where it started; a bookmark may repeat
        if _older(version, self.resource_version, or_equal=kind != "BOOKMARK"):
            return Outcome.ROLLBACK
        self.resource_version = version
        if kind == "BOOKMARK":
            return Outcome.BOOKMARK
        key = object_key(obj)
        if kind == "DELETED":
            if self.objects.pop(key, None) is None:
                return Outcome.UNCHANGED
        else:
            record = self.project(obj)
            if self.objects.get(key) == record:
                return Outcome.UNCHANGED
            self.objects[key] = record
        self.changed.add(key)
        return Outcome.APPLIED

    def drain(self) -> list[tuple[str, Any]]:
        """(key, record now or None if gone) of every key changed since the last drain."""
        keys, self.changed = self.changed, set()
        return [(k, self.objects.get(k)) for k in keys]


def parse_event(line: bytes) -> Obj:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise WatchProtocolError(f"watch event is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise WatchProtocolError("watch event is not an object")
    return event


class LineBuffer:
    """Splits a byte stream into lines; holds at most ``max_line`` bytes of one line."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def __repr__(self) -> str:
        return f"<LineBuffer [{len(self._buf)} of {self.max_line} bytes buffered]>"

    def feed(self, data: bytes) -> list[bytes]:
        """The complete, non-blank lines that ``data`` finished (without newlines)."""
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        if len(rest) > self.max_line:
            raise WatchProtocolError(f"watch event longer than {self.max_line} bytes")
        self._buf = bytearray(rest)
        for line in lines:
            if len(line) > self.max_line:
                raise WatchProtocolError(f"watch event longer than {self.max_line} bytes")
        return [bytes(line) for line in lines if line.strip()]

    def finish(self) -> list[bytes]:
        """A last line that had no newline before the stream ended."""
        rest, self._buf = bytes(self._buf), bytearray()
        return [rest] if rest.strip() else []


@dataclass(frozen=True)
class Backoff:
    """Exponential delay capped at ``cap``, then jittered down by up to ``jitter``."""

    initial: float = 0.8  # client-go's reflector: 800 ms doubling to 30 s
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5  # 0.5: the delay lands in [d/2, d]

    def delay(self, attempt: int, rand: float) -> float:
        """Delay before retry number ``attempt`` (0-based), ``rand`` in [0, 1)."""
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand)
