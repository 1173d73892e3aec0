"""The object store behind the fake API server: resource versions, history, selectors.

It stands for etcd plus the API server's watch cache, reduced to what list and
watch clients can observe: one cluster-wide, increasing ``resourceVersion``;
every write stamps the object with the next version and appends an event to a
history; a watch from version V replays the history after V and then follows
live; ``compact()`` forgets the history so that older versions answer 410.
Plain synchronous code: the trio shell in ``apiserver.py`` serves it over HTTP.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    resource: str  # "endpointslices"
    group: str  # "" = core
    version: str
    kind: str  # "EndpointSlice"
    namespaced: bool = True
    fields: tuple[str, ...] = ("metadata.name", "metadata.namespace")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


NAMES = ("metadata.name", "metadata.namespace")
KINDS: dict[str, Kind] = {
    k.resource: k
    for k in (
        Kind("services", "", "v1", "Service"),
        Kind("endpoints", "", "v1", "Endpoints"),
        Kind("pods", "", "v1", "Pod", fields=(*NAMES, "spec.nodeName", "status.phase")),
        Kind("nodes", "", "v1", "Node", namespaced=False, fields=("metadata.name",)),
        Kind("endpointslices", "discovery.k8s.io", "v1", "EndpointSlice"),
    )
}  # fmt: skip


class SelectorError(ValueError):
    pass


def _lookup(obj: Obj, dotted: str) -> str | None:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return None if cur is None else str(cur)


@dataclass(frozen=True)
class Selector:
    """A conjunction of label and field terms: ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``."""

    labels: tuple[tuple[str, str, str], ...] = ()  # (op, key, value), op in = != exists !exists
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, kind: Kind, label_text: str, field_text: str) -> Selector:
        def terms(text: str, allow_exists: bool) -> tuple[tuple[str, str, str], ...]:
            out = []
            for raw in filter(None, (t.strip() for t in text.split(","))):
                if "!=" in raw:
                    key, value = raw.split("!=", 1)
                    out.append(("!=", key.strip(), value.strip()))
                elif "=" in raw:
                    key, value = raw.replace("==", "=").split("=", 1)
                    out.append(("=", key.strip(), value.strip()))
                elif allow_exists and raw.startswith("!"):
                    out.append(("!exists", raw[1:].strip(), ""))
                elif allow_exists:
                    out.append(("exists", raw, ""))
                else:
                    raise SelectorError(f"invalid field selector term {raw!r}")
            return tuple(out)

        fields = terms(field_text, allow_exists=False)
        for _, key, _ in fields:
            if key not in kind.fields:
                raise SelectorError(f'field label not supported: "{key}"')
        return cls(terms(label_text, allow_exists=True), fields)

    def matches(self, obj: Obj) -> bool:
        lbls = (obj.get("metadata") or {}).get("labels") or {}
        for op, key, value in self.labels:
            have = lbls.get(key)
            if (op == "exists" and have is None) or (op == "!exists" and have is not None):
                return False
            if (op == "=" and have != value) or (op == "!=" and have == value):
                return False
        for op, key, value in self.fields:
            have_field = _lookup(obj, key) or ""
            if (op == "=") != (have_field == value):
                return False
        return True


@dataclass(frozen=True)
class Event:
    version: int
    kind: Kind
    type: str  # ADDED MODIFIED DELETED
    obj: Obj
    old: Obj | None  # the object before a MODIFIED (for selector transitions)


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


@dataclass
class ClusterState:
    """Objects by resource, the current version, and the event history since compaction."""

    version: int = 1
    compacted: int = 0  # the oldest version a watch may start from; older -> 410
    objects: dict[str, dict[str, Obj]] = field(default_factory=lambda: {k: {} for k in KINDS})
    history: list[Event] = field(default_factory=list)
    max_history: int = 10_000

    def write(self, resource: str, obj: Obj, delete: bool = False) -> Event:
        kind = KINDS[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        store = self.objects[resource]
        old = store.get(key_of(obj))
        if delete and old is None:
            raise KeyError(f"{resource} {key_of(obj)} does not exist")
        self.version += 1
        if delete:
            obj = copy.deepcopy(old) if old is not None else obj
            del store[key_of(obj)]
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("uid", f"uid-{resource}-{key_of(obj)}")
        meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        if not delete:
            store[key_of(obj)] = obj
        type_ = "DELETED" if delete else "MODIFIED" if old is not None else "ADDED"
        event = Event(self.version, kind, type_, obj, old)
        self.history.append(event)
        if len(self.history) > self.max_history:
            self.compacted = self.history.pop(0).version
        return event

    def compact(self) -> None:
        """Forget the history: watches and continue tokens from before now get 410."""
        self.history.clear()
        self.compacted = self.version

    def listing(self, resource: str, ns: str | None, sel: Selector) -> list[Obj]:
        objs = [o for k, o in sorted(self.objects[resource].items()) if sel.matches(o)]
        return [o for o in objs if ns is None or o["metadata"].get("namespace") == ns]

    def since(self, version: int) -> Iterator[Event]:
        return (e for e in self.history if e.version > version)
