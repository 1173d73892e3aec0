"""The reflector's pure core: events applied to the cache, line splitting, backoff, targets."""

from __future__ import annotations

from typing import Any

import pytest

from nodeproxy.discovery.kubernetes.listdecode import ListDecodeError, ListDecoder
from nodeproxy.discovery.kubernetes.store import (
    Backoff,
    LineBuffer,
    Outcome,
    Resource,
    Store,
    WatchProtocolError,
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
    store.replace(map(store.entry, [obj("a", "3"), obj("b", "4")]), "10")
    store.replace(map(store.entry, [obj("b", "11"), obj("c", "12", ns=None)]), "12")
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
        ({"type": "DELETED", "object": obj("zz", "24")}, Outcome.UNCHANGED, ["a"], "24"),
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
    store.replace([store.entry(obj("a", "20"))], "20")
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
    store.replace([store.entry(obj("a", "1", x=1))], "1")
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


def test_projected_store_keeps_records_and_spots_unchanged_objects() -> None:
    def project(o: dict[str, Any]) -> object:
        return (o["metadata"]["name"], o.get("x"))  # what a projection keeps

    store = Store("nodes", project)
    store.replace(map(store.entry, [obj("a", "1", ns=None, x=1)]), "1")
    kept = store.objects["a"]
    assert kept == ("a", 1)
    # a relist whose record is equal keeps the cached object (translation sees no change)
    store.replace(map(store.entry, [obj("a", "2", ns=None, x=1, junk=[1] * 9)]), "2")
    assert store.objects["a"] is kept
    heartbeat = {"type": "MODIFIED", "object": obj("a", "3", ns=None, x=1, status="beat")}
    assert store.apply(heartbeat) is Outcome.UNCHANGED
    assert store.resource_version == "3"
    assert store.apply({"type": "MODIFIED", "object": obj("a", "4", ns=None, x=2)}) is (
        Outcome.APPLIED
    )
    assert store.objects["a"] == ("a", 2)


def test_drain_names_the_keys_that_changed_since_the_last_drain() -> None:
    def project(o: dict[str, Any]) -> object:
        return o.get("x")

    store = Store("pods", project)
    store.replace(map(store.entry, [obj("a", "1", x=1), obj("b", "1", x=1)]), "1")
    assert sorted(store.drain()) == [("default/a", 1), ("default/b", 1)]
    assert store.drain() == []
    # a relist: a is the same, b changed, c is new, d never existed; then b goes
    store.replace(
        map(store.entry, [obj("a", "2", x=1), obj("b", "2", x=2), obj("c", "2", x=3)]), "2"
    )
    assert sorted(store.drain()) == [("default/b", 2), ("default/c", 3)]
    store.apply({"type": "DELETED", "object": obj("b", "3")})
    store.apply({"type": "MODIFIED", "object": obj("a", "4", x=1, junk=True)})  # unchanged
    store.replace(map(store.entry, [obj("a", "5", x=1), obj("c", "5", x=3)]), "5")
    assert store.drain() == [("default/b", None)]


LIST = (
    '{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"abc",'
    '"remainingItemCount":1},"items":[{"metadata":{"name":"a\\u00e9\u00e9"}},'
    ' {"n": [1, 2.5e3, true, null, "x]}"]} ,{}]}'
).encode()


@pytest.mark.parametrize("step", [1, 2, 7, 64, len(LIST)])
def test_list_decoder_yields_items_as_they_complete(step: int) -> None:
    dec = ListDecoder(max_item=1024)
    items: list[Any] = []
    for i in range(0, len(LIST), step):
        items += dec.feed(LIST[i : i + step])  # byte by byte splits UTF-8 sequences too
    items += dec.finish()
    assert items == [
        {"metadata": {"name": "a\u00e9\u00e9"}},
        {"n": [1, 2500.0, True, None, "x]}"]},
        {},
    ]
    assert dec.fields == {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "7", "continue": "abc", "remainingItemCount": 1},
    }
    assert dec.count == 3


def test_list_decoder_metadata_after_items_and_empty_lists() -> None:
    meta = b'"metadata":{"resourceVersion":"3"}'
    for body, n in ((b'{"items":[],' + meta + b"}", 0), (b'{"items":null,' + meta + b"}", 0),
                    (b' { "items" : [ 1 ] , ' + meta + b" } ", 1)):  # fmt: skip
        dec = ListDecoder(max_item=64)
        assert len(dec.feed(body) + dec.finish()) == n
        assert dec.fields["metadata"] == {"resourceVersion": "3"}


@pytest.mark.parametrize(
    "body",
    [b"nope", b"[]", b'{"items": [1,', b'{"items": [1] "x": 2}', b'{"items": [1]} junk',
     b'{"items": [{"a": tru}]}', b'{3: 4}', b'{"items": ["\xff"]}'],
)  # fmt: skip
def test_list_decoder_refuses_what_is_not_a_list(body: bytes) -> None:
    def decode() -> None:
        dec = ListDecoder(max_item=64)
        dec.feed(body)
        dec.finish()

    with pytest.raises(ListDecodeError):
        decode()


def test_list_decoder_caps_one_item_before_it_ends() -> None:
    dec = ListDecoder(max_item=32)
    assert dec.feed(b'{"items": [{"a": "' + b"x" * 20) == []
    with pytest.raises(ListDecodeError, match="longer than 32"):
        dec.feed(b"x" * 20)


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
