"""The trio shell around ``Store``: list, watch, and start again, forever.

One ``Reflector`` per resource, run as one task that is the only writer of its
``Store``. The loop is client-go's ``ListAndWatch``:

1. list (in pages of ``page_size``, following ``continue``) and replace the cache;
   each page is decoded item by item as it arrives (``listdecode.py``) and each
   item projected to its record at once, so no page is ever held whole;
2. watch from the list's ``resourceVersion`` with ``allowWatchBookmarks=true``
   and a ``timeoutSeconds`` jittered in [T, 2T) so that a fleet of proxies does
   not reconnect in step; apply every event; tell the owner something changed;
3. when the server ends the watch (its timeout), watch again from the last
   version seen -- bookmarks keep that version fresh, so no relist is needed;
4. 410 Gone, as an HTTP status or as an ``ERROR`` event, means the version is
   too old: list again right away. So do 504 "Too large resource version" and
   an event whose version is not newer than the cache's: the API's versions
   went back (an etcd restore), and watching again from ours would wait
   forever on stale state. A second relist in a row without a watch event in
   between waits the backoff first, so a confused server is not hammered;
5. any other failure (refused, reset, TLS, 5xx, 401 after a token mix-up, a
   malformed event): wait a capped, jittered exponential backoff and reconnect,
   watching again from the last version if there was one.

Failures never clear the cache, so the last good state keeps being served
while the API server is unreachable. Counters go to the shared ``Stats``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from nodeproxy.discovery.kubernetes.apiclient import (
    ApiClient,
    ApiStatusError,
    ApiUnavailable,
    Gone,
    TooLargeResourceVersion,
)
from nodeproxy.discovery.kubernetes.listdecode import ListDecodeError, ListDecoder
from nodeproxy.discovery.kubernetes.store import (
    K8S_EVENTS,
    K8S_RELISTS,
    K8S_SYNCED,
    K8S_WATCH_RESTARTS,
    RELIST,
    Backoff,
    LineBuffer,
    Obj,
    Outcome,
    Resource,
    Store,
    WatchProtocolError,
    keep_whole,
    parse_event,
)
from nodeproxy.stats.registry import Stats, labels

log = structlog.get_logger("nodeproxy.discovery.kubernetes")


@dataclass(frozen=True)
class ReflectorSettings:
    """Bounds and timings of one list+watch loop."""

    watch_timeout: float = 300.0  # server-side timeoutSeconds, jittered to [T, 2T)
    page_size: int = 500  # items per list page
    max_list_bytes: int = 256 * 1024 * 1024  # one list page (streamed; a runaway-server bound)
    max_event_bytes: int = 4 * 1024 * 1024  # one watch event line (etcd objects are <= 1.5 MiB)
    min_watch_seconds: float = 1.0  # a watch ending sooner with no events counts as a failure
    backoff: Backoff = field(default_factory=Backoff)


class Reflector:
    """Keeps ``store`` in step with ``resource``; calls ``on_change`` after each change."""

    def __init__(
        self,
        client: ApiClient,
        resource: Resource,
        stats: Stats,
        on_change: Callable[[], None],
        settings: ReflectorSettings | None = None,
        rng: random.Random | None = None,
        project: Callable[[Obj], object] = keep_whole,
    ) -> None:
        self.client = client
        self.resource = resource
        self.store = Store(resource.name, project)
        self.stats = stats
        self.on_change = on_change
        self.settings = settings or ReflectorSettings()
        self.rng = rng or random.Random()
        self.failures = 0  # consecutive; the backoff exponent
        self.last_error = ""  # why the last list or watch failed (for /ready before the sync)

    def __repr__(self) -> str:
        return f"<Reflector {self.resource.name} {self.store!r} [{self.failures} failures]>"

    def _count(self, name: str, **lbls: str) -> None:
        self.stats.inc(name, labels(resource=self.resource.name, **lbls))

    async def run(self) -> None:
        """List and watch until cancelled."""
        relist_reason = "initial"
        while True:
            try:
                if relist_reason:
                    self._count(K8S_RELISTS, reason=relist_reason)
                    await self.list()
                    relist_reason = ""
                outcome = await self.watch()
                if outcome not in RELIST:
                    self._count(K8S_WATCH_RESTARTS, reason="timeout")
                    self.failures = 0
                    continue
                relist_reason = outcome.value
                why = f"watch event: {outcome.value}"
            except (Gone, TooLargeResourceVersion) as exc:
                relist_reason = "gone" if isinstance(exc, Gone) else "too_large"
                why = str(exc)
            except (ApiUnavailable, ApiStatusError, WatchProtocolError) as exc:
                log.warning("k8s_watch_failed", resource=self.resource.name, error=str(exc))
                self._count(K8S_WATCH_RESTARTS, reason="error")
                self.last_error = str(exc)
                await self._back_off()
                continue
            log.info("k8s_relist", resource=self.resource.name, reason=relist_reason, error=why)
            self._count(K8S_WATCH_RESTARTS, reason=relist_reason)
            if self.failures == 0:  # one immediate relist; repeated ones back off
                self.failures = 1
            else:
                await self._back_off()

    async def _back_off(self) -> None:
        delay = self.settings.backoff.delay(self.failures, self.rng.random())
        self.failures += 1
        await trio.sleep(delay)

    async def list(self) -> None:
        """One complete (paged) list, then replace the cache."""
        s, store = self.settings, self.store
        entries: list[tuple[str, object]] = []
        cont, version = "", ""
        while True:
            target = self.resource.list_target(s.page_size, cont)
            decoder = ListDecoder(s.max_event_bytes)
            size = 0
            try:
                async with self.client.get(target) as response:
                    while chunk := await response.next_chunk():
                        size += len(chunk)
                        if size > s.max_list_bytes:
                            raise ApiUnavailable(f"list page larger than {s.max_list_bytes} bytes")
                        entries.extend(map(store.entry, decoder.feed(chunk)))
                entries.extend(map(store.entry, decoder.finish()))
            except ListDecodeError as exc:
                raise WatchProtocolError(str(exc)) from exc
            meta = decoder.fields.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            version, cont = str(meta.get("resourceVersion", "")), meta.get("continue") or ""
            if not cont:
                break
        store.replace(entries, version)
        del entries
        self.last_error = ""
        self.stats.gauge_set(K8S_SYNCED, labels(resource=self.resource.name), 1)
        items = len(store.objects)
        log.info("k8s_listed", resource=self.resource.name, items=items, version=version)
        self.on_change()

    async def watch(self) -> Outcome:
        """One watch from the current version; returns when it ends (GONE: list again)."""
        s = self.settings
        timeout = int(s.watch_timeout * (1.0 + self.rng.random()))
        target = self.resource.watch_target(self.store.resource_version, timeout)
        started = trio.current_time()
        events = 0
        lines = LineBuffer(s.max_event_bytes)
        # The server should end the stream after `timeout` s; silence well past it is a dead peer.
        async with self.client.get(target, read_timeout=timeout + 30.0) as response:
            while chunk := await response.next_chunk():
                for line in lines.feed(chunk):
                    events += 1
                    if (outcome := self._apply(line)) in RELIST:
                        return outcome
            for line in lines.finish():
                events += 1
                if (outcome := self._apply(line)) in RELIST:
                    return outcome
        if events == 0 and trio.current_time() - started < s.min_watch_seconds:
            raise ApiUnavailable("the watch ended at once without events")
        return Outcome.APPLIED

    def _apply(self, line: bytes) -> Outcome:
        event = parse_event(line)
        outcome = self.store.apply(event)
        self._count(K8S_EVENTS, type=str(event.get("type")))
        if outcome is Outcome.ERROR:
            raise ApiUnavailable(f"watch error event: {event.get('object')}")
        if outcome is Outcome.APPLIED or outcome is Outcome.UNCHANGED:
            self.failures = 0
        if outcome is Outcome.APPLIED:
            self.on_change()
        return outcome
