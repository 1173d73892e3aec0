"""What the proxies of one mode cost, read from /proc: CPU, memory, established connections.

Why apart: bench/pernode_vs_perpod.py measures up to a few hundred processes at once (one
sidecar per pod); this reads /proc once per sample for all of them instead of once per process
group (bench/harness.cpu_seconds), and adds memory (RSS and PSS) and the TCP table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> Iterable[tuple[int, int, list[str]]]:
    """(pid, pgrp, stat fields after the command name) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        yield int(entry.name), int(fields[2]), fields  # fields[0] is stat field 3 (state)


def cpu_seconds(pgids: set[int]) -> float:
    """utime + stime of every live process in these process groups, in seconds."""
    ticks = sum(int(f[11]) + int(f[12]) for _, g, f in _processes() if g in pgids)
    return ticks / TICK


def pids_of(pgids: set[int]) -> list[int]:
    return [pid for pid, g, _ in _processes() if g in pgids]


class ReceiveCalls:
    """recv(2)-family calls these processes make while it is open: a ``perf stat`` on the
    ``recvfrom`` tracepoint (root and ``perf`` needed; else ``count`` stays None).

    nodeproxy reads its plain TCP sockets with recv(2) (nodeproxy/netio.py), so on a
    keep-alive proxied request the floor is two: one per side. More means reads that found
    nothing (EAGAIN) and parked the task. (/proc/PID/io's ``syscr`` counted them while
    netio used read(2); it does not count recv.)
    """

    def __init__(self, pids: list[int]) -> None:
        self.count: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        perf = shutil.which("perf")
        if perf is None or not pids or os.geteuid() != 0:
            return
        argv = [perf, "stat", "-x,", "-e", "syscalls:sys_enter_recvfrom"]
        argv += ["-p", ",".join(map(str, pids))]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def stop(self) -> int | None:
        """End the count; the calls seen, or None when it could not count."""
        if self._proc is None:
            return None
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return None
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == "syscalls:sys_enter_recvfrom":
                with contextlib.suppress(ValueError):
                    self.count = int(fields[0])
        return self.count


def _fields(pgids: set[int], file: str) -> Iterator[tuple[str, str]]:
    """``name: value`` lines of /proc/PID/<file> for every live process of ``pgids``."""
    for pid in pids_of(pgids):
        try:
            text = Path(f"/proc/{pid}/{file}").read_text()
        except OSError:
            continue  # exited while we looked
        for line in text.splitlines():
            name, _, value = line.partition(":")
            yield name, value.strip()


@dataclass
class Memory:
    """Resident memory of a set of processes, in bytes."""

    rss: int = 0  # what each process's own view counts (shared pages counted in each)
    pss: int = 0  # proportional: a page shared by n processes counts 1/n in each


def memory(pgids: set[int]) -> Memory:
    mem = Memory()
    for name, value in _fields(pgids, "smaps_rollup"):
        if name in ("Rss", "Pss"):
            kib = int(value.split()[0]) * 1024
            if name == "Rss":
                mem.rss += kib
            else:
                mem.pss += kib
    return mem


def pin(pgids: set[int], cpu: int) -> None:
    """Move every thread of these process groups to one core."""
    for pid in pids_of(pgids):
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # the thread exited
                os.sched_setaffinity(tid, {cpu})


def _addr(hex_addr: str) -> tuple[str, int]:
    ip, port = hex_addr.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


def established_to(remotes: set[tuple[str, int]]) -> int:
    """Established TCP connections whose remote end is one of `remotes` (client side: each
    connection once, although both ends are on this machine)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "01" and _addr(parts[2]) in remotes:
            count += 1
    return count
