"""The supervisor <-> worker control channel: typed messages in length-prefixed frames.

Why pickle: both ends are the same program started from the same install,
over a socketpair nobody else holds (the child inherits its end; it is never
a path on disk), and the payloads are our own frozen dataclasses and stats
dicts. A frame is a 4-byte big-endian length and the pickled message;
``MAX_FRAME`` bounds what one side can make the other buffer.

Supervisor -> worker: ``Endpoints`` (a discovery snapshot), ``Health`` (the
active health checks' verdicts), ``StatsRequest``, ``Drain``, ``BreakerOpen``.
Worker -> supervisor: ``Ready``, ``StatsReply``, ``BreakerTripped``.
``Outbox`` is the supervisor's per-worker send side: one slot per kind, so a
worker that reads slowly gets the latest snapshot, never a queue of stale ones.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import trio

from nodeproxy.config.model import EMPTY_LABELS
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.traffic.sources import WireRow

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct("!I")
_CHUNK = 256 * 1024


class ChannelClosed(Exception):
    """The other side closed the channel (or sent a frame over ``MAX_FRAME``)."""


# One endpoint on the wire: (host, port, labels, node, weight); labels as a plain dict
# (the read-only mappings the config uses do not pickle, and tuples are compact).
WireEndpoint = tuple[str, int, dict[str, str], str | None, float | None]


@dataclass(frozen=True)
class Endpoints:
    version: int
    clusters: Mapping[str, tuple[WireEndpoint, ...]]
    node_proxies: Mapping[str, str] = field(default_factory=dict)
    pods: Mapping[str, Any] = field(default_factory=dict)  # pod IP -> PodIdentity
    # (ClusterIP, port) -> cluster: what interception resolves a Service address with
    service_ips: Mapping[tuple[str, int], str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        version: int,
        clusters: Mapping[str, tuple[Endpoint, ...]],
        node_proxies: Mapping[str, str],
        pods: Mapping[str, Any],
        service_ips: Mapping[tuple[str, int], str] | None = None,
    ) -> Endpoints:
        wire = {
            name: tuple((e.host, e.port, dict(e.labels), e.node, e.weight) for e in eps)
            for name, eps in clusters.items()
        }
        return cls(version, wire, dict(node_proxies), dict(pods), dict(service_ips or {}))

    def endpoints(self) -> dict[str, tuple[Endpoint, ...]]:
        """The snapshot's clusters as the data path holds them."""
        return {
            name: tuple(
                Endpoint(h, p, MappingProxyType(lb) if lb else EMPTY_LABELS, n, w)
                for h, p, lb, n, w in eps
            )
            for name, eps in self.clusters.items()
        }


@dataclass(frozen=True)
class Health:
    unhealthy: frozenset[tuple[str, str]]  # (cluster, endpoint address)


@dataclass(frozen=True)
class StatsRequest:
    seq: int
    clusters: bool = False  # also the /clusters view
    active_only: bool = False  # of the clusters with traffic only (the dashboard)


@dataclass(frozen=True)
class Drain:
    reason: str


@dataclass(frozen=True)
class BreakerOpen:
    """Another worker's breaker for ``cluster`` tripped: open ours too."""

    cluster: str


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class StatsReply:
    seq: int
    counters: dict[str, dict[Any, float]]
    gauges: dict[str, dict[Any, float]]
    histograms: dict[str, dict[Any, Any]]
    resident_bytes: int
    cpu_seconds: float
    clusters: dict[str, Any] | None = None
    # with clusters: the per-source table (traffic/sources.py)
    sources: list[WireRow] | None = None


@dataclass(frozen=True)
class BreakerTripped:
    cluster: str


async def send(stream: trio.abc.SendStream, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_FRAME:
        raise ValueError(f"control message of {len(data)} bytes over {MAX_FRAME}")
    await stream.send_all(_HEADER.pack(len(data)) + data)


class Receiver:
    """Reads whole frames off a stream; owns the partial-frame buffer."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = await self.stream.receive_some(_CHUNK)
            if not chunk:
                raise ChannelClosed("closed by the other side")
            self._buffer += chunk

    async def receive(self) -> object:
        await self._fill(_HEADER.size)
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > MAX_FRAME:
            raise ChannelClosed(f"frame of {size} bytes over {MAX_FRAME}")
        await self._fill(_HEADER.size + size)
        data = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
        del self._buffer[: _HEADER.size + size]
        return pickle.loads(data)


class Outbox:
    """What the supervisor still has to tell one worker: the latest of each kind."""

    def __init__(self) -> None:
        self.endpoints: Endpoints | None = None
        self.health: Health | None = None
        self.stats: StatsRequest | None = None
        self.drain: Drain | None = None
        self.breakers: set[str] = set()  # bounded by the number of clusters
        self.wake = trio.Event()

    def __repr__(self) -> str:
        return f"<Outbox [{len(self.pending())} pending]>"

    def put(self, message: Endpoints | Health | StatsRequest | Drain | BreakerOpen) -> None:
        """Replace the pending message of that kind (a newer snapshot wins)."""
        if isinstance(message, Endpoints):
            self.endpoints = message
        elif isinstance(message, Health):
            self.health = message
        elif isinstance(message, StatsRequest):
            pending = self.stats  # the one answer must serve both askers
            if pending is not None and pending.clusters:
                active_only = pending.active_only and (message.active_only or not message.clusters)
                message = StatsRequest(message.seq, True, active_only)
            self.stats = message
        elif isinstance(message, Drain):
            self.drain = message
        else:
            self.breakers.add(message.cluster)
        self.wake.set()

    def pending(self) -> list[object]:
        out: list[object] = [m for m in (self.endpoints, self.health) if m is not None]
        out += [BreakerOpen(c) for c in sorted(self.breakers)]
        out += [m for m in (self.stats, self.drain) if m is not None]
        return out

    def take(self) -> list[object]:
        """Everything pending, in order (endpoints before health before the rest); clears."""
        out = self.pending()
        self.endpoints = self.health = self.stats = self.drain = None
        self.breakers = set()
        self.wake = trio.Event()
        return out

    async def run(self, stream: trio.abc.SendStream) -> None:
        """Send whatever is pending whenever something is put, until cancelled."""
        while True:
            await self.wake.wait()
            for message in self.take():
                await send(stream, message)
