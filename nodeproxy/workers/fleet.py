"""The worker processes: start them on the shared sockets, restart the ones that die.

Why ``subprocess`` with ``pass_fds`` rather than ``multiprocessing``: a worker
needs exactly its listening sockets and one end of a socketpair, and
``pass_fds`` hands over precisely those fds (everything else is closed on
exec); the child is a fresh interpreter (no forked trio state, no
``multiprocessing`` resource tracker beside it), trio waits for it like any
process, and ``ps`` shows ``python -m nodeproxy.workers.child`` per worker.

Each ``Slot`` is one worker position (index 0..N-1) that outlives the
processes filling it. A process that exits while the supervisor is not
draining is a crash: its last stats go to ``Retired`` (counters never go
backwards), ``nodeproxy_worker_restarts_total`` counts it, and a new process
takes the slot after a short backoff. ``RestartBudget`` bounds that: more than
``max_restarts`` in ``window`` seconds over the whole fleet and the
supervisor gives up, drains and exits non-zero.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import deque
from dataclasses import asdict, dataclass

import structlog
import trio

from nodeproxy.traffic.sources import WireRow
from nodeproxy.workers import wire

log = structlog.get_logger("nodeproxy.supervisor")

RESTART_BACKOFF = 0.2  # seconds before the first restart of a slot; doubles, up to 5 s
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class ChildArgs:
    """What a worker needs to load the same config the supervisor runs."""

    config: str
    log_format: str | None = None
    log_level: str | None = None
    kubeconfig: str | None = None
    context: str | None = None


class RestartBudget:
    """At most ``max_restarts`` restarts in any ``window`` seconds (pure: takes ``now``)."""

    def __init__(self, max_restarts: int = 5, window: float = 60.0) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self._times: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<RestartBudget [{len(self._times)}/{self.max_restarts} in {self.window}s]>"

    def allow(self, now: float) -> bool:
        """Spend one restart at ``now``; False when the budget is used up."""
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


class Slot:
    """One worker position; the state of its current process and what it last reported."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.outbox = wire.Outbox()
        self.process: trio.Process | None = None
        self.ready = False
        self.restarts = 0
        self.last: wire.StatsReply | None = None
        self.clusters: dict[str, object] | None = None
        self.sources: list[WireRow] | None = None
        self.reply_seq = 0
        self.replied = trio.Event()
        # This slot's share of the retired totals (for the per-worker series)
        self.retired_requests = 0.0
        self.retired_connections = 0.0

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        state = "ready" if self.ready else "up" if pid else "down"
        return f"<Slot #{self.index} [{state} pid {pid} | {self.restarts} restarts]>"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def take_reply(self, reply: wire.StatsReply) -> None:
        self.last = reply
        if reply.clusters is not None:
            self.clusters = reply.clusters
        if reply.sources is not None:
            self.sources = reply.sources
        self.reply_seq = max(self.reply_seq, reply.seq)
        self.replied.set()
        self.replied = trio.Event()

    def gone(self) -> wire.StatsReply | None:
        """The process exited: forget it, wake waiters; its last stats (to retire)."""
        last, self.last, self.clusters, self.sources = self.last, None, None, None
        self.ready = False
        self.process = None
        self.replied.set()
        self.replied = trio.Event()
        return last


def child_command(
    args: ChildArgs, index: int, control_fd: int, listen: dict[str, list[int]]
) -> list[str]:
    spec = {**asdict(args), "index": index, "control_fd": control_fd, "listen": listen}
    return [sys.executable, "-m", "nodeproxy.workers.child", json.dumps(spec)]


async def spawn(
    args: ChildArgs, slot: Slot, listen: dict[str, list[socket.socket]]
) -> tuple[trio.Process, trio.SocketStream]:
    """Start a worker for ``slot`` on ``listen``; the process and our end of its channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = {name: [s.fileno() for s in socks] for name, socks in listen.items()}
    try:
        process = await trio.lowlevel.open_process(
            child_command(args, slot.index, theirs.fileno(), fds),
            pass_fds=(theirs.fileno(), *(fd for group in fds.values() for fd in group)),
            stdin=-3,  # subprocess.DEVNULL; stdout and stderr are the supervisor's
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    slot.process = process
    return process, trio.SocketStream(trio.socket.from_stdlib_socket(ours))


def backoff(restarts_in_a_row: int) -> float:
    return float(min(RESTART_BACKOFF * 2 ** max(restarts_in_a_row - 1, 0), MAX_BACKOFF))
