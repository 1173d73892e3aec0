"""Fixed-rate HTTP/1.1 load from many client pods, each bound to its own source address.

Why our own: the mesh knows a caller by its source address (the pod IP), and wrk cannot bind
one. This is a small trio client: every client pod sends at a fixed rate (open loop: each request
has a scheduled start time, and its latency is measured from that time, so a slow answer that
delays the next request is counted against the proxy, not hidden; no coordinated omission) over
a few keep-alive connections bound to the pod's address. Requests are `POST` with a 1 KB body
and must be answered 200 with a body (1 KB from the bench's nginx).

Run by bench/pernode_vs_perpod.py as `python bench/loadgen.py SPEC.json`; prints `measure-start`
and `measure-end` lines (so the caller samples /proc at the edges of the measured window) and
then one JSON line with the result. Bounded: it stops `warmup + duration + grace` after start.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

BODY = b"x" * 1024
GRACE = 5.0  # seconds after the window for answers in flight; then everything is cancelled


@dataclass
class Client:
    """One client pod: its address, where it connects and what it asks for."""

    source: str
    proxy: tuple[str, int] | None  # None: straight to the chosen replica
    forward: bool  # absolute-form request line (a forward proxy: proxy.py)
    services: list[tuple[str, list[tuple[str, int]]]]  # (host, replicas)
    turn: int = 0
    rr: dict[str, int] = field(default_factory=dict)

    def next_request(self) -> tuple[tuple[str, int], bytes]:
        """(where to connect, the request bytes) of this client's next request."""
        host, replicas = self.services[self.turn % len(self.services)]
        self.turn += 1
        i = self.rr.get(host, 0)
        self.rr[host] = i + 1
        replica = replicas[i % len(replicas)]
        target = f"{replica[0]}:{replica[1]}"
        path = f"http://{target}/" if self.forward else "/"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {target if self.forward else host}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        return (self.proxy or replica), head.encode() + BODY


class Conn:
    """A keep-alive connection with a read buffer; reads one response (content-length only)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send one request, read its response: (status, server wants to close)."""
        await self.stream.send_all(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length, close = 0, False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True
            elif name == "transfer-encoding":
                raise RuntimeError("chunked answer: the bench upstream sends content-length")
        while len(self.buf) < length:
            await self._fill()
        del self.buf[:length]
        return status, close

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise RuntimeError("connection closed mid-response")
        self.buf += data


async def connect(source: str, addr: tuple[str, int]) -> Conn:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(addr)
    return Conn(trio.SocketStream(sock))


@dataclass
class Tally:
    """What the measured window saw."""

    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    bad_status: dict[int, int] = field(default_factory=dict)
    failed: int = 0
    first_error: str = ""
    connects: int = 0


async def worker(
    client: Client,
    start: float,
    every: float,
    window: tuple[float, float],
    stop: float,
    tally: Tally,
) -> None:
    """Send at `start, start+every, ...` until `stop`; record those scheduled inside `window`."""
    conns: dict[tuple[str, int], Conn] = {}
    k = 0
    while (due := start + k * every) < stop:
        k += 1
        await trio.sleep_until(due)
        addr, request = client.next_request()
        counted = window[0] <= due < window[1]
        try:
            conn = conns.get(addr)
            if conn is None:
                conn = conns[addr] = await connect(client.source, addr)
                tally.connects += 1
            status, close = await conn.exchange(request)
            if close:
                await conns.pop(addr).stream.aclose()
        except (OSError, RuntimeError, ValueError, IndexError, trio.BrokenResourceError) as exc:
            if (c := conns.pop(addr, None)) is not None:
                await trio.aclose_forcefully(c.stream)
            if counted:
                tally.failed += 1
                tally.first_error = tally.first_error or f"{client.source}->{addr}: {exc!r}"
            continue
        if not counted:
            continue
        if status == 200:
            tally.ok += 1
            tally.latencies.append(trio.current_time() - due)
        else:
            tally.bad_status[status] = tally.bad_status.get(status, 0) + 1
    for c in conns.values():
        await trio.aclose_forcefully(c.stream)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    clients = [
        Client(
            c["source"],
            (c["proxy"][0], int(c["proxy"][1])) if c["proxy"] else None,
            bool(c["forward"]),
            [(h, [(a, int(p)) for a, p in reps]) for h, reps in c["services"]],
            turn=i,
        )
        for i, c in enumerate(spec["clients"])
    ]
    rate, per = float(spec["rate"]), int(spec["connections_per_client"])
    warmup, duration = float(spec["warmup"]), float(spec["duration"])
    every = len(clients) * per / rate  # each worker's interval: all workers together give `rate`
    t0 = trio.current_time() + 0.2
    window = (t0 + warmup, t0 + warmup + duration)
    tally = Tally()
    with trio.move_on_after(0.2 + warmup + duration + GRACE):
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                for j in range(per):  # spread the first requests evenly over one interval
                    offset = every * (i * per + j) / (len(clients) * per)
                    nursery.start_soon(worker, client, t0 + offset, every, window, window[1], tally)
            await trio.sleep_until(window[0])
            print("measure-start", flush=True)
            await trio.sleep_until(window[1])
            print("measure-end", flush=True)
    lat = sorted(tally.latencies)
    scheduled = tally.ok + tally.failed + sum(tally.bad_status.values())
    return {
        "ok": tally.ok,
        "failed": tally.failed,
        "unanswered": max(0, round(rate * duration) - scheduled),
        "bad_status": {str(k): v for k, v in tally.bad_status.items()},
        "first_error": tally.first_error,
        "rps": tally.ok / duration,
        "p50_ms": percentile(lat, 0.50) * 1e3,
        "p90_ms": percentile(lat, 0.90) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3,
        "connects": tally.connects,
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    print(json.dumps(trio.run(run, spec)), flush=True)


if __name__ == "__main__":
    main()
