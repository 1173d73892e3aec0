"""The demo's birthday greeter, seen from a real HTTP client on loopback.

Why: `nodeproxy demo` and the benchmark lean on this app; if it misbehaves (drops keep-alive,
swallows bodies, resets on 413) the demo would blame the proxy for it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Iterator
from functools import partial

import h11
import httpx
import pytest
import trio

from nodeproxy.config import load_config_text
from nodeproxy.demo.config import birthday_today, demo_banner, demo_config_text
from nodeproxy.demo.greeter import MAX_BODY_BYTES, respond, serve_greeter

TODAY = datetime.date(2024, 5, 17)


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    port = await nursery.start(partial(serve_greeter, "127.0.0.1", 0, "a", today=lambda: TODAY))
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as c:
        yield c


async def test_birthday_today_says_happy_birthday(client: httpx.AsyncClient) -> None:
    r = await client.post("/hello/Magalixcorp", json={"dateOfBirth": "1990-05-17"})
    assert r.status_code == 200
    assert r.json() == {"message": "Hello, Magalixcorp! Happy birthday"}
    assert r.headers["content-type"] == "application/json"


async def test_other_day_says_hello_only(client: httpx.AsyncClient) -> None:
    r = await client.post("/hello/Magalixcorp", json={"dateOfBirth": "1990-05-18"})
    assert r.status_code == 200
    assert r.json() == {"message": "Hello, Magalixcorp!"}


async def test_get_form_and_url_encoded_name(client: httpx.AsyncClient) -> None:
    r = await client.get("/hello/Jane%20Doe")
    assert (r.status_code, r.json()) == (200, {"message": "Hello, Jane Doe!"})


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"dob": "1990-05-17"}', b'{"dateOfBirth": 19900517}'],
)
async def test_bad_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/hello/x", content=body)
    assert r.status_code == 400
    assert "dateOfBirth" in r.json()["error"] or "JSON" in r.json()["error"]


@pytest.mark.parametrize("dob", ["1990-13-01", "1990-02-30", "17-05-1990", "2999-01-01", ""])
async def test_bad_date_is_400(client: httpx.AsyncClient, dob: str) -> None:
    r = await client.post("/hello/x", json={"dateOfBirth": dob})
    assert r.status_code == 400
    assert "error" in r.json()


@pytest.mark.parametrize("path", ["/", "/nope", "/hello/", "/hello/a/b"])
async def test_unknown_path_is_404(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert "not found" in r.json()["error"]


async def test_replica_header(client: httpx.AsyncClient) -> None:
    for path in ("/hello/x", "/nope", "/healthz"):
        assert (await client.get(path)).headers["x-greeter-replica"] == "a"


async def test_other_method_is_405(client: httpx.AsyncClient) -> None:
    r = await client.delete("/hello/x")
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]


async def _exchange(stream: trio.SocketStream, conn: h11.Connection, name: str) -> bytes:
    body = json.dumps({"dateOfBirth": "2000-01-01"}).encode()
    headers = [("host", "greeter"), ("content-length", str(len(body)))]
    req = h11.Request(method="POST", target=f"/hello/{name}", headers=headers)
    out = conn.send(req) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    await stream.send_all(out)
    data = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Data):
            data += event.data
        elif isinstance(event, h11.EndOfMessage):
            return data


async def test_keep_alive_two_requests_one_connection(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        for name in ("one", "two"):
            body = await _exchange(stream, conn, name)
            assert json.loads(body) == {"message": f"Hello, {name}!"}
            assert (conn.our_state, conn.their_state) == (h11.DONE, h11.DONE)
            conn.start_next_cycle()


async def test_oversized_content_length_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/hello/x", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413
    assert r.headers["connection"] == "close"
    assert "body" in r.json()["error"]


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (MAX_BODY_BYTES // 2)

    r = await client.post("/hello/x", content=chunks())
    assert r.status_code == 413


async def test_body_at_the_limit_is_read(client: httpx.AsyncClient) -> None:
    doc = b'{"dateOfBirth": "1990-05-17"}'
    body = doc + b" " * (MAX_BODY_BYTES - len(doc))
    r = await client.post("/hello/x", content=body)
    assert (r.status_code, r.json()) == (200, {"message": "Hello, x! Happy birthday"})


def _cases() -> Iterator[tuple[str, str, bytes, int]]:
    yield "POST", "/hello/a?x=1", b'{"dateOfBirth": "2000-05-17"}', 200
    yield "HEAD", "/hello/a", b"", 200
    yield "PUT", "/healthz", b"", 405
    yield "POST", "/hello/a", b'{"dateOfBirth": "2024-05-18"}', 400  # tomorrow


@pytest.mark.parametrize(("method", "target", "body", "status"), list(_cases()))
def test_respond_table(method: str, target: str, body: bytes, status: int) -> None:
    assert respond(method, target, body, TODAY).status == status


# The demo's built-in config and banner (nodeproxy/demo/config.py) go through the real loader.


def test_demo_config_loads_and_routes_bdgreeter_to_every_replica() -> None:
    text = demo_config_text([3001, 3002], 4141, 9902, log_level="warning", access_log=False)
    config = load_config_text(text, env={}, source="<demo>")
    cluster = config.clusters["bdgreeter"]
    assert [(e.host, e.port) for e in cluster.endpoints] == [
        ("127.0.0.1", 3001),
        ("127.0.0.1", 3002),
    ]
    assert all(dict(e.labels) == {"version": "v1"} for e in cluster.endpoints)
    (listener,) = config.listeners
    assert (listener.name, listener.host, listener.port) == ("outbound", "127.0.0.1", 4141)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9902)
    assert (config.log.level, config.log.access_log, config.node_name) == ("warning", False, "demo")
    assert config.limits.drain_timeout == 5.0


def test_demo_config_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one"):
        demo_config_text([])


def test_demo_banner_has_the_curl_lines_with_todays_birthday() -> None:
    banner = demo_banner(4140, 9901, today=datetime.date(2024, 2, 29))
    assert (
        "curl -x http://127.0.0.1:4140 -X POST -H 'content-type: application/json'"
        ' -d \'{"dateOfBirth":"1992-02-29"}\' http://bdgreeter/hello/Magalixcorp'
    ) in banner
    assert "curl -H 'Host: bdgreeter' -X POST" in banner
    assert "http://127.0.0.1:4140/hello/Magalixcorp" in banner
    assert "curl -i -x http://127.0.0.1:4140 http://nosuchservice/" in banner
    for admin_path in ("/clusters", "/stats/prometheus", "/ready"):
        assert f"127.0.0.1:9901{admin_path}" in banner
    day = datetime.date.fromisoformat(birthday_today(datetime.date(2025, 11, 25)))
    assert respond("POST", "/hello/x", f'{{"dateOfBirth": "{day}"}}'.encode(), TODAY).status == 200
    assert (day.month, day.day) == (11, 25)


async def test_demo_end_to_end_round_robin_then_drain() -> None:
    from nodeproxy.demo.runner import demo_main  # the whole app: proxy, admin, two greeters

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            demo = partial(demo_main, 0, 0, 2, handle_signals=False, announce=False)
            handle = await nursery.start(demo)
            proxy = f"http://127.0.0.1:{handle.listener_ports['outbound']}"
            admin = f"http://127.0.0.1:{handle.admin_port}"
            async with httpx.AsyncClient(proxy=proxy, timeout=5) as via_proxy:
                dob = {"dateOfBirth": "1990-01-01"}
                r = await via_proxy.post("http://bdgreeter/hello/Magalixcorp", json=dob)
                assert r.status_code == 200
                assert r.json()["message"].startswith("Hello, Magalixcorp!")
                replicas = set()
                for _ in range(4):
                    r = await via_proxy.get("http://bdgreeter.default/hello/x")
                    assert r.status_code == 200
                    replicas.add(r.headers["x-greeter-replica"])
                assert replicas == {"a", "b"}
                r = await via_proxy.get("http://nosuchservice/")
                assert (r.status_code, r.headers["x-nodeproxy-error"]) == (404, "unknown_service")
            async with httpx.AsyncClient(timeout=5) as direct:
                r = await direct.get(f"{proxy}/hello/Magalixcorp", headers={"host": "bdgreeter"})
                assert r.json() == {"message": "Hello, Magalixcorp!"}
                assert (await direct.get(f"{admin}/ready")).status_code == 200
                assert (await direct.post(f"{admin}/drain")).status_code < 300
        # leaving the nursery means the drained proxy stopped the greeters too
