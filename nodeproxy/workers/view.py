"""The supervisor's admin answers: its workers' numbers, fetched and merged.

``refresh`` asks every running worker for a stats snapshot (bounded by
``STATS_TIMEOUT``; a worker that does not answer in time is shown with what
it last sent) and the reads that follow (``families``, ``clusters``) merge
them with ``merge.py``'s rules. Besides the merged families, the per-worker
series say how the fleet is doing: up, restarts, resident memory, and the
requests and connections each slot took (how evenly they spread).
"""

from __future__ import annotations

from typing import Any

import trio

from nodeproxy.admin.clusters import active_clusters, clusters_view
from nodeproxy.admin.process import process_families, runtime_families
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import DOWNSTREAM_CONNECTIONS_TOTAL, REQUESTS
from nodeproxy.stats.prometheus import Family, stats_families
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.traffic.sources import SourceCounts
from nodeproxy.workers import wire
from nodeproxy.workers.fleet import Slot
from nodeproxy.workers.merge import Retired, merge_clusters, merge_sources, merged

STATS_TIMEOUT = 2.0  # a scrape waits at most this for the workers' answers

WORKER_UP = "nodeproxy_worker_up"
WORKER_RESTARTS = "nodeproxy_worker_restarts_total"
WORKER_RSS = "nodeproxy_worker_resident_memory_bytes"
WORKER_REQUESTS = "nodeproxy_worker_requests_total"
WORKER_CONNECTIONS = "nodeproxy_worker_connections_total"
WORKERS_CPU = "nodeproxy_workers_cpu_seconds_total"


def total(reply: wire.StatsReply, name: str) -> float:
    return float(sum(reply.counters.get(name, {}).values()))


class AdminView:
    """Reads the supervisor's slots and retired totals; owns only the request sequence."""

    def __init__(self, runtime: Runtime, slots: list[Slot], retired: Retired) -> None:
        self.runtime = runtime
        self.slots = slots
        self.retired = retired
        self.seq = 0
        self.started_at = 0.0

    def __repr__(self) -> str:
        return f"<AdminView [{len(self.slots)} slots | request {self.seq}]>"

    def not_ready(self) -> str | None:
        down = [str(s.index) for s in self.slots if not s.ready]
        return f"workers not up: {', '.join(down)} of {len(self.slots)}" if down else None

    async def refresh(self, clusters: bool, active_only: bool = False) -> None:
        """Ask every running worker for its stats; wait (bounded) for the answers."""
        self.seq += 1
        seq = self.seq
        asked = [s for s in self.slots if s.alive]
        for slot in asked:
            slot.outbox.put(wire.StatsRequest(seq, clusters, active_only))
        with trio.move_on_after(STATS_TIMEOUT):
            for slot in asked:
                while slot.alive and slot.reply_seq < seq:
                    await slot.replied.wait()

    def stats(self) -> Stats:
        live = [s.last for s in self.slots if s.last is not None]
        return merged(self.runtime.stats, self.retired, live)

    def families(self, now: float) -> list[Family]:
        fams = stats_families(self.stats())
        fams += runtime_families(self.runtime, now, self.started_at, traffic=False)
        return fams + process_families() + self._worker_families()

    def _worker_families(self) -> list[Family]:
        def per(value: Any) -> tuple[tuple[Any, float], ...]:
            return tuple((labels(worker=str(s.index)), float(value(s))) for s in self.slots)

        def requests(s: Slot) -> float:
            return s.retired_requests + (total(s.last, REQUESTS) if s.last else 0)

        def connections(s: Slot) -> float:
            live = total(s.last, DOWNSTREAM_CONNECTIONS_TOTAL) if s.last else 0
            return s.retired_connections + live

        def rss(s: Slot) -> float:
            return s.last.resident_bytes if s.last else 0

        cpu = self.retired.cpu_seconds + sum(s.last.cpu_seconds for s in self.slots if s.last)
        return [
            Family(WORKER_UP, "gauge", "1 while the worker reports ready.", per(lambda s: s.ready)),
            Family(WORKER_RSS, "gauge", "Resident memory of each worker process.", per(rss)),
            Family(WORKER_REQUESTS, "counter", "Requests answered per worker slot.", per(requests)),
            Family(
                WORKER_CONNECTIONS, "counter", "Connections accepted per worker.", per(connections)
            ),
            Family(
                WORKER_RESTARTS,
                "counter",
                "Worker processes restarted after an unexpected exit.",
                per(lambda s: s.restarts),
            ),
            Family(WORKERS_CPU, "counter", "CPU seconds of all workers, exited too.", (((), cpu),)),
        ]

    def sources(self, now: float) -> list[tuple[str, SourceCounts]]:
        """Every live worker's per-source table (from its last clusters reply), summed."""
        return merge_sources((s.sources for s in self.slots if s.sources is not None), now)

    def clusters(self, now: float, active_only: bool = False) -> dict[str, Any]:
        """The merged view; ``active_only``: of the clusters some worker has traffic for."""
        admin = Runtime(self.runtime.config, stats=self.stats(), endpoints=self.runtime.endpoints)
        views = {s.index: s.clusters for s in self.slots if s.clusters is not None}
        only = None
        if active_only:
            only = active_clusters(admin)
            for view in views.values():
                listed: Any = view.get("clusters", ())
                only.update(c["name"] for c in listed)
        return merge_clusters(clusters_view(admin, now, only=only), views)
