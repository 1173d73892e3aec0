"""How many workers ``workers: auto`` means: the CPUs this process may actually use.

Why not ``os.cpu_count()``: in a container it reports the host's cores, while
the process may be pinned to a few of them (``sched_getaffinity``: cpusets,
``taskset``) or throttled to a fraction of them by a CFS quota (the pod's CPU
limit, cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``). Workers beyond what
the quota pays for only add memory and context switches, so ``auto`` is the
smaller of the two, rounded up (a 1.5-CPU limit gets 2 workers), at least 1.

The parsing is pure (file text in, number out) so the table of cases is a
unit test; ``available_cpus`` only reads the files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_WORKERS = 256  # a config typo (workers: 2000) is refused, not obeyed


def quota_v2(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` ("200000 100000" -> 2.0; "max ..." -> None)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_v1(quota_us: str, period_us: str) -> float | None:
    """CPUs granted by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none)."""
    try:
        quota, period = int(quota_us), int(period_us)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpus_allowed(affinity: int, quota: float | None) -> int:
    """The worker count ``auto`` resolves to."""
    count = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, min(count, MAX_WORKERS))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(
    root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self")
) -> float | None:
    """The CPU quota of this process's cgroup (v2 first, then v1), None when unlimited."""
    own = ""
    for line in (_read(proc / "cgroup") or "").splitlines():
        if line.startswith("0::"):
            own = line[3:].lstrip("/")
    for directory in (root / own, root) if own else (root,):
        text = _read(directory / "cpu.max")
        if text is not None:
            return quota_v2(text)
    quota = _read(root / "cpu" / "cpu.cfs_quota_us")
    period = _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is not None and period is not None:
        return quota_v1(quota, period)
    return None


def available_cpus() -> int:
    """``workers: auto``: affinity and the cgroup quota, whichever is smaller."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return cpus_allowed(affinity, cgroup_quota())
