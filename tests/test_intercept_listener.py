"""The transparent listener's dispatch on loopback, with the kernel's answer faked.

What the redirect rules would do (rewrite the destination, ``SO_ORIGINAL_DST``
gives it back) needs root and a network namespace: tests/test_intercept_box.py
does that. Here ``original_dst`` is replaced by a table, so everything after
it runs for real on every machine: the app with Kubernetes discovery from the
fake API, detection on real sockets, the HTTP pipeline routed on the ClusterIP
(a lying ``Host`` changes nothing), a pod IP pinned to that pod, TCP carried by
``nodeproxy.tunnel.carry_tcp`` with the peeked bytes first, a server-first
protocol after the detection deadline, and a connection that was not
redirected closed at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.intercept import listener as intercept_listener
from tests.fakes.apiserver import FakeApiServer, fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, service
from tests.helpers.backends import backend, serving

WEB_VIP, ECHO_VIP, BANNER_VIP = ("10.96.0.10", 80), ("10.96.0.11", 9000), ("10.96.0.12", 3306)


def add_service(api: FakeApiServer, name: str, vip: tuple[str, int], port: int) -> None:
    svc = service(name, [("p", vip[1], port)])
    svc["spec"]["clusterIP"], svc["spec"]["clusterIPs"] = vip[0], [vip[0]]
    api.add("services", svc)
    eps = [endpoint("127.0.0.1", node="node-1", pod=f"{name}-0")]
    api.add("endpointslices", endpoint_slice(f"{name}-1", name, eps, ports=[("p", port)]))


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo:" + data)


async def banner(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.send_all(b"220 ready\r\n")  # speaks first, as SMTP or MySQL
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


@asynccontextmanager
async def intercepting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AppHandle, dict[int, tuple[str, int]], dict[str, int]]]:
    """The app with an intercept listener; ``dests[client_port]`` is what that
    client "dialled" (the fake ``SO_ORIGINAL_DST``)."""
    dests: dict[int, tuple[str, int]] = {}

    def fake_original_dst(sock: trio.socket.SocketType) -> tuple[str, int]:
        port = sock.getpeername()[1]
        if port not in dests:
            raise OSError(2, "no conntrack entry: not redirected")
        return dests[port]

    monkeypatch.setattr(intercept_listener, "original_dst", fake_original_dst)
    async with (
        fake_apiserver() as api,
        backend() as web,
        serving(echo) as echo_port,
        serving(banner) as banner_port,
    ):
        add_service(api, "web", WEB_VIP, web.port)
        add_service(api, "echo", ECHO_VIP, echo_port)
        add_service(api, "banner", BANNER_VIP, banner_port)
        kc = api.write_kubeconfig(tmp_path / "kubeconfig")
        config = load_config_text(f"""
node_name: node-1
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
log: {{access_log: false}}
discovery: {{kubernetes: {{kubeconfig: {kc}}}}}
intercept: {{address: "127.0.0.1:0", detect_timeout: 100ms}}
""")
        async with trio.open_nursery() as nursery:
            app: AppHandle = await nursery.start(partial(run_app, config, handle_signals=False))
            with trio.fail_after(10):
                await app.runtime.endpoints.first_sync.wait()  # the fake API's first list
            assert app.runtime.endpoints.current().service_ips
            ports = {"web": web.port, "echo": echo_port, "banner": banner_port}
            yield app, dests, ports
            app.runtime.drain.start("test over")


async def dial(
    app: AppHandle, dests: dict[int, tuple[str, int]], dst: tuple[str, int] | None
) -> trio.SocketStream:
    """Connect to the intercept listener as a pod that dialled ``dst`` (None: dialled the
    listener itself, no NAT); registered by source port before the SYN goes out."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    if dst is not None:
        dests[sock.getsockname()[1]] = dst
    await sock.connect(("127.0.0.1", app.listener_ports["intercept"]))
    return trio.SocketStream(sock)


async def test_http_is_routed_on_the_cluster_ip_not_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with intercepting(tmp_path, monkeypatch) as (app, dests, _):
        for host in (b"10.96.0.10", b"echo", b"nonexistent.example"):
            stream = await dial(app, dests, WEB_VIP)
            async with stream:
                await stream.send_all(
                    b"GET /hello/pod HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
                )
                raw = b""
                while chunk := await stream.receive_some(65536):
                    raw += chunk
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), raw
            seen = json.loads(body)
            assert seen["target"] == "/hello/pod"
            assert dict(seen["headers"])["host"] == host.decode()  # sent on as the client wrote it


async def test_tcp_and_tls_take_the_tcp_path_with_the_peeked_bytes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with intercepting(tmp_path, monkeypatch) as (app, dests, _):
        stream = await dial(app, dests, ECHO_VIP)
        async with stream:
            await stream.send_all(b"*1\r\n$4\r\nPING\r\n")  # redis: not HTTP
            assert await stream.receive_some(65536) == b"echo:*1\r\n$4\r\nPING\r\n"
            await stream.send_all(b"more")
            assert await stream.receive_some(65536) == b"echo:more"


async def test_a_server_first_protocol_speaks_after_the_detection_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with intercepting(tmp_path, monkeypatch) as (app, dests, _):
        stream = await dial(app, dests, BANNER_VIP)
        async with stream:
            with trio.fail_after(5):
                assert await stream.receive_some(65536) == b"220 ready\r\n"  # we said nothing
            await stream.send_all(b"EHLO x\r\n")
            assert await stream.receive_some(65536) == b"EHLO x\r\n"


async def test_a_pod_ip_is_that_pod_and_an_unknown_destination_passes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with intercepting(tmp_path, monkeypatch) as (app, dests, ports):
        stream = await dial(app, dests, ("127.0.0.1", ports["web"]))  # the pod's own address
        async with stream:
            await stream.send_all(b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 200"), raw
        assert b'"target": "/direct"' in raw or b'"target":"/direct"' in raw
        counted = app.runtime.stats.sum_counter(
            "nodeproxy_intercepted_connections_total", protocol="http1", path="http"
        )
        assert counted == 1
        async with serving(echo) as outside:  # in no Service: carried as dialled
            stream = await dial(app, dests, ("127.0.0.1", outside))
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")  # HTTP, but to no Service
                assert await stream.receive_some(65536) == b"echo:GET / HTTP/1.1\r\n\r\n"


async def closed(stream: trio.SocketStream) -> bool:
    """The peer closed without a byte: EOF, or a reset (it closed with our bytes unread)."""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


async def test_a_connection_that_was_not_redirected_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with intercepting(tmp_path, monkeypatch) as (app, dests, _):
        stream = await dial(app, dests, None)  # no conntrack entry
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            assert await closed(stream)
        listener = app.listener_ports["intercept"]
        stream = await dial(app, dests, ("127.0.0.1", listener))  # dialled us: a loop
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            assert await closed(stream)
