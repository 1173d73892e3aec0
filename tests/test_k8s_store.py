"""The reflector's pure core: events applied to the cache, line splitting, backoff, targets."""

from __future__ import annotations

from typing import Any

import pytest

from nodeproxy.discovery.kubernetes.store import (
    Backoff,
    LineBuffer,
    Outcome,
    Resource,
    Store,
    WatchProtocolError,
    parse_list,
    too_large_status,
)


def obj(name: str, rv: str, ns: str | None = "default", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, **extra}


TOO_LARGE = {
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 504,
    "message": "Timeout: Too large resource version: 25, current: 20", "reason": "Timeout",
    "details": {"causes": [{"reason": "ResourceVersionTooLarge",
                            "message": "Too large resource version"}], "retryAfterSeconds": 1},
}  # fmt: skip


def test_list_replaces_everything_and_marks_synced() -> None:
    store = Store("services")
    store.replace([obj("a", "3"), obj("b", "4")], "10")
    store.replace([obj("b", "11"), obj("c", "12", ns=None)], "12")
    assert sorted(store.objects) == ["c", "default/b"]
    assert store.resource_version == "12"
    assert store.synced
    assert repr(store) == "<Store services [2 objects, version 12, synced]>"


@pytest.mark.parametrize(
    ("event", "outcome", "keys", "version"),
    [
        ({"type": "ADDED", "object": obj("new", "21")}, Outcome.APPLIED, ["a", "new"], "21"),
        ({"type": "MODIFIED", "object": obj("a", "22", x=1)}, Outcome.APPLIED, ["a"], "22"),
        ({"type": "DELETED", "object": obj("a", "23")}, Outcome.APPLIED, [], "23"),
        ({"type": "DELETED", "object": obj("zz", "24")}, Outcome.APPLIED, ["a"], "24"),
        ({"type": "BOOKMARK", "object": obj("", "30", ns=None)}, Outcome.BOOKMARK, ["a"], "30"),
        ({"type": "ERROR", "object": {"kind": "Status", "code": 410}}, Outcome.GONE, ["a"], "20"),
        ({"type": "ERROR", "object": {"kind": "Status", "code": 500}}, Outcome.ERROR, ["a"], "20"),
        ({"type": "ERROR", "object": TOO_LARGE}, Outcome.TOO_LARGE, ["a"], "20"),
        # the API went back (an etcd restore): nothing applied, list again
        ({"type": "ADDED", "object": obj("new", "20")}, Outcome.ROLLBACK, ["a"], "20"),
        ({"type": "DELETED", "object": obj("a", "7")}, Outcome.ROLLBACK, ["a"], "20"),
        ({"type": "BOOKMARK", "object": obj("", "19", ns=None)}, Outcome.ROLLBACK, ["a"], "20"),
        ({"type": "BOOKMARK", "object": obj("", "20", ns=None)}, Outcome.BOOKMARK, ["a"], "20"),
    ],
)
def test_watch_events(
    event: dict[str, Any], outcome: Outcome, keys: list[str], version: str
) -> None:
    store = Store("pods")
    store.replace([obj("a", "20")], "20")
    assert store.apply(event) is outcome
    assert [k.removeprefix("default/") for k in store.objects] == keys
    assert store.resource_version == version


@pytest.mark.parametrize(
    ("doc", "too_large"),
    [
        (TOO_LARGE, True),
        ({"code": 500, "details": {"causes": [{"reason": "ResourceVersionTooLarge"}]}}, True),
        # Kubernetes 1.17.0-1.18.5: the cause's message only; before 1.17: the message only
        ({"code": 504, "details": {"causes": [{"message": "Too large resource version"}]}}, True),
        ({"code": 504, "message": "Timeout: Too large resource version: 9, current: 8"}, True),
        ({"code": 500, "message": "Too large resource version: 9, current: 8"}, False),
        ({"code": 504, "message": "Timeout: request did not complete"}, False),
        ({"code": 504, "details": {"causes": "junk"}}, False),
        ("not a status", False),
    ],
)
def test_too_large_resource_version_as_client_go_decides(doc: Any, too_large: bool) -> None:
    assert too_large_status(doc) is too_large


def test_opaque_versions_are_never_compared() -> None:
    store = Store("pods")
    store.replace([], "b7")
    assert store.apply({"type": "ADDED", "object": obj("x", "a1")}) is Outcome.APPLIED


def test_modified_stores_the_new_object() -> None:
    store = Store("pods")
    store.replace([obj("a", "1", x=1)], "1")
    store.apply({"type": "MODIFIED", "object": obj("a", "2", x=2)})
    assert store.objects["default/a"]["x"] == 2


@pytest.mark.parametrize(
    "event",
    [
        {"type": "SURPRISE", "object": obj("a", "1")},
        {"type": "ADDED"},
        {"type": "ADDED", "object": {"metadata": {"name": "a"}}},  # no resourceVersion
        {"type": "ADDED", "object": {"metadata": {"resourceVersion": "1"}}},  # no name
        {"type": "BOOKMARK", "object": {"metadata": {}}},
    ],
)
def test_malformed_events_are_refused(event: dict[str, Any]) -> None:
    with pytest.raises(WatchProtocolError):
        Store("pods").apply(event)


def test_line_buffer_byte_by_byte() -> None:
    stream = b'{"a":1}\n\n{"b":2}\n{"c":3}'
    buf = LineBuffer(max_line=16)
    lines: list[bytes] = []
    for i in range(len(stream)):
        lines += buf.feed(stream[i : i + 1])
    assert lines == [b'{"a":1}', b'{"b":2}']
    assert buf.finish() == [b'{"c":3}']
    assert buf.finish() == []


def test_line_buffer_refuses_a_line_over_the_cap_before_it_ends() -> None:
    buf = LineBuffer(max_line=8)
    assert buf.feed(b"12345678") == []
    with pytest.raises(WatchProtocolError):
        buf.feed(b"9")
    with pytest.raises(WatchProtocolError):
        LineBuffer(max_line=4).feed(b"123456\n")


def test_parse_list() -> None:
    body = b'{"kind":"PodList","metadata":{"resourceVersion":"7","continue":"abc"},"items":[{}]}'
    assert parse_list(body) == ([{}], "7", "abc")
    assert parse_list(b'{"metadata":{"resourceVersion":"7"},"items":null}') == ([], "7", "")
    for bad in (b"nope", b"[]", b'{"items": 3}'):
        with pytest.raises(WatchProtocolError):
            parse_list(bad)


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [(0, 0.0, 1.0), (1, 0.0, 2.0), (3, 0.0, 8.0), (4, 0.0, 10.0), (50, 0.0, 10.0),
     (2, 0.999999, 2.000002), (100_000, 0.5, 7.5)],
)  # fmt: skip
def test_backoff_is_capped_and_jittered_downwards(attempt: int, rand: float, delay: float) -> None:
    backoff = Backoff(initial=1.0, cap=10.0, factor=2.0, jitter=0.5)
    assert backoff.delay(attempt, rand) == pytest.approx(delay)


def test_targets_carry_selectors_version_bookmarks_and_timeout() -> None:
    pods = Resource("pods", "", "/api/v1/pods", field_selector="spec.nodeName=node-1")
    assert pods.list_target(500) == "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=500"
    assert pods.list_target(2, "tok") == (
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=2&continue=tok"
    )
    slices = Resource("endpointslices", "discovery.k8s.io", "/apis/x", label_selector="k")
    assert slices.watch_target("42", 300) == (
        "/apis/x?labelSelector=k&watch=true&resourceVersion=42"
        "&allowWatchBookmarks=true&timeoutSeconds=300"
    )
