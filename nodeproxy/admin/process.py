"""Gauges computed at scrape time: the process's resources and the runtime's state.

Why not counters in ``Stats``: these are facts read on demand (memory from
``/proc``, CPU from ``getrusage``, readiness from ``Runtime``), so keeping
them updated on every change would cost the hot path for nothing. Each scrape
of ``/stats/prometheus`` or ``/stats`` asks for them once.

Uptime comes from trio's clock (``now - started_at``), never the wall clock.
"""

from __future__ import annotations

import os
import resource

from nodeproxy.runtime import Runtime
from nodeproxy.stats.prometheus import Family
from nodeproxy.stats.registry import labels
from nodeproxy.stats.traffic import traffic_families

RESIDENT_MEMORY = "nodeproxy_process_resident_memory_bytes"
CPU_SECONDS = "nodeproxy_process_cpu_seconds_total"
OPEN_FDS = "nodeproxy_process_open_fds"
MAX_FDS = "nodeproxy_process_max_fds"
UPTIME = "nodeproxy_uptime_seconds"
READY = "nodeproxy_ready"
DRAINING = "nodeproxy_draining"
CLUSTER_ENDPOINTS = "nodeproxy_cluster_endpoints"
SNAPSHOT_VERSION = "nodeproxy_endpoint_snapshot_version"


def resident_memory_bytes() -> int:
    """Current RSS from ``/proc/self/statm``; peak RSS from ``getrusage`` elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def process_families() -> list[Family]:
    """Resident memory, CPU time and file descriptors of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fams = [
        Family(
            RESIDENT_MEMORY,
            "gauge",
            "Resident memory size in bytes.",
            (((), float(resident_memory_bytes())),),
        ),
        Family(
            CPU_SECONDS,
            "counter",
            "User and system CPU time spent, in seconds.",
            (((), usage.ru_utime + usage.ru_stime),),
        ),
        Family(
            MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors (soft limit).",
            (((), float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])),),
        ),
    ]
    fds = open_fds()
    if fds is not None:
        fams.append(Family(OPEN_FDS, "gauge", "Open file descriptors.", (((), float(fds)),)))
    return fams


def runtime_families(
    runtime: Runtime, now: float, started_at: float, *, traffic: bool = True
) -> list[Family]:
    """Readiness, drain state, uptime and endpoint counts from the runtime (and, with
    ``traffic``, its subset and breaker families: a supervisor takes its workers')."""
    snapshot = runtime.endpoints.current()
    names = sorted(set(runtime.config.clusters) | set(snapshot.clusters))
    return [
        Family(
            UPTIME,
            "gauge",
            "Seconds since the admin server started (trio clock).",
            (((), max(now - started_at, 0.0)),),
        ),
        Family(
            READY,
            "gauge",
            "1 when /ready answers 200 (listeners up, endpoints synced, not draining).",
            (((), 1.0 if runtime.ready else 0.0),),
        ),
        Family(
            DRAINING,
            "gauge",
            "1 once a drain has started (signal or POST /drain).",
            (((), 1.0 if runtime.drain.draining else 0.0),),
        ),
        Family(
            CLUSTER_ENDPOINTS,
            "gauge",
            "Endpoints known for each cluster in the current snapshot.",
            tuple((labels(cluster=n), float(len(snapshot.endpoints(n)))) for n in names),
        ),
        Family(
            SNAPSHOT_VERSION,
            "gauge",
            "Version of the endpoint snapshot in use (bumps on every publish).",
            (((), float(snapshot.version)),),
        ),
        *(traffic_families(runtime.traffic, now) if traffic else ()),
    ]
