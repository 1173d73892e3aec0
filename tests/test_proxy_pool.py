"""EndpointPool bookkeeping: slots, LIFO reuse, capacity, idle expiry (no I/O, explicit now)."""

from __future__ import annotations

import pytest

from nodeproxy.upstream.endpoint_pool import EndpointPool, PoolFull


def test_new_slots_until_capacity_then_full() -> None:
    pool: EndpointPool[str] = EndpointPool(capacity=2, idle_timeout=10)
    assert pool.checkout(0) == (None, [])
    assert pool.checkout(0) == (None, [])
    assert pool.active == 2
    assert not pool.has_room
    with pytest.raises(PoolFull):
        pool.checkout(0)
    pool.discard()  # a connect failed: its slot is free again
    assert pool.has_room
    assert pool.checkout(0) == (None, [])


def test_reuse_is_lifo_and_counts_stay_exact() -> None:
    pool: EndpointPool[str] = EndpointPool(capacity=3, idle_timeout=10)
    for _ in range(2):
        pool.checkout(0)
    pool.checkin("a", now=1)
    pool.checkin("b", now=2)
    assert (pool.active, pool.idle) == (0, 2)
    assert pool.checkout(3) == ("b", [])
    assert (pool.active, pool.idle) == (1, 1)
    assert repr(pool) == "<EndpointPool [1 active, 1 idle, capacity 3]>"


def test_idle_connections_expire_by_now() -> None:
    pool: EndpointPool[str] = EndpointPool(capacity=3, idle_timeout=10)
    for _ in range(3):
        pool.checkout(0)
    pool.checkin("old", now=0)
    pool.checkin("mid", now=5)
    pool.checkin("new", now=9)
    assert pool.expire(9.9) == []
    assert pool.expire(10) == ["old"]
    conn, expired = pool.checkout(15)
    assert (conn, expired) == ("new", ["mid"])
    assert (pool.active, pool.idle) == (1, 0)


def test_idle_connections_count_against_capacity_but_are_handed_out() -> None:
    pool: EndpointPool[str] = EndpointPool(capacity=1, idle_timeout=10)
    pool.checkout(0)
    pool.checkin("a", now=0)
    assert pool.has_room
    assert pool.checkout(1) == ("a", [])
    with pytest.raises(PoolFull):
        pool.checkout(1)


def test_take_all_idle() -> None:
    pool: EndpointPool[str] = EndpointPool(capacity=2, idle_timeout=10)
    pool.checkout(0)
    pool.checkout(0)
    pool.checkin("a", 0)
    assert pool.take_all_idle() == ["a"]
    assert (pool.active, pool.idle) == (1, 0)
