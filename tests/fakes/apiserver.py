"""A fake Kubernetes API server: real HTTP/1.1 on loopback, speaking the real wire protocol.

It stands for ``kube-apiserver`` as list+watch clients see it -- our reflector
and ``kubectl get [-w]`` -- for Services, Endpoints, Pods, Nodes (``/api/v1``)
and EndpointSlices (``/apis/discovery.k8s.io/v1``), cluster-wide or under
``/namespaces/<ns>/``:

- list: ``{"kind": "<Kind>List", "metadata": {"resourceVersion", "continue"}, "items"}``
  with ``limit``/``continue`` paging (items without kind/apiVersion, as the
  real server sends them), ``labelSelector`` (``k``, ``!k``, ``k=v``, ``k!=v``) and
  ``fieldSelector`` (``spec.nodeName`` for pods; unsupported fields answer 400);
- watch (``watch=true``): a chunked body of newline-delimited JSON events
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}``, from
  ``resourceVersion`` (replaying history after it; ``""``/``"0"`` start with
  ADDED for every current object), ending after ``timeoutSeconds``; BOOKMARKs
  only when ``allowWatchBookmarks=true`` and the test calls ``bookmark()``;
  objects leaving or entering a selector turn into DELETED/ADDED;
- a version older than the compacted history: ``410 Gone``, either as the HTTP
  status or (what a real server does for watches) as a 200 whose only event is
  ``ERROR`` with a ``Status`` of code 410 -- ``gone_as`` picks;
- a watch from a version *newer* than the server's (after an etcd restore rolled the
  versions back, ``restore()``): ``504`` ``Timeout`` with the cause
  ``ResourceVersionTooLarge`` ("Too large resource version"), as an ``ERROR`` event
  or the HTTP status (``too_large_as``), or ``"accept"``: the watch is served and
  its events carry versions lower than the client's;
- legacy discovery documents (``/api``, ``/apis``, ``/api/v1``, ...) so kubectl works;
- optional bearer-token check (``tokens``), answering 401 with a ``Status``;
- ``GET .../namespaces/<ns>/pods/<name>`` (one pod, or 404 ``NotFound``) and
  ``POST /apis/authentication.k8s.io/v1/tokenreviews`` for tokens issued with
  ``token_reviews.issue(pod)`` (tests/fakes/tokenreview.py).

Test controls: ``add``/``modify``/``delete`` objects, ``bookmark()``,
``compact()``, ``end_watches(gone=...)``, ``checkpoint()``/``restore()`` (an etcd
backup and restore: versions go backwards and every watch is cut), ``go_down()``/``go_up()`` (down:
open connections are cut and new ones closed at once, as when the API server
restarts) and ``requests`` (the targets and tokens clients sent).
What it does not do: writes over HTTP (but TokenReview), protobuf, tables, sendInitialEvents.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from tests.fakes import discovery_docs, tokenreview
from tests.fakes.cluster_state import KINDS, ClusterState, Event, Kind, Obj, Selector, SelectorError
from tests.fakes.tokenreview import TokenReviews

GoneAs = Literal["event", "status"]
TooLargeAs = Literal["event", "status", "accept"]


def status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def too_large(requested: int, current: int) -> Obj:
    """apimachinery's ``NewTooLargeResourceVersionError``: a 504 Timeout with its cause."""
    msg = f"Timeout: Too large resource version: {requested}, current: {current}"
    doc = status(504, "Timeout", msg)
    doc["details"] = {"causes": [{"reason": "ResourceVersionTooLarge",
                                  "message": "Too large resource version"}],
                      "retryAfterSeconds": 1}  # fmt: skip
    return doc


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None
    selector: Selector
    bookmarks: bool
    send: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def line(self, e: Event) -> bytes | None:
        """The event this watcher sees for a write, if any."""
        if e.kind is not self.kind or (
            self.namespace is not None and e.obj["metadata"].get("namespace") != self.namespace
        ):
            return None
        now = self.selector.matches(e.obj)
        before = e.old is not None and self.selector.matches(e.old)
        if e.type == "DELETED":
            type_ = "DELETED" if now else None
        else:
            type_ = ("MODIFIED" if before else "ADDED") if now else ("DELETED" if before else None)
        return None if type_ is None else _event(type_, e.obj)


def _event(type_: str, obj: Obj) -> bytes:
    return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


class FakeApiServer:
    def __init__(
        self, gone_as: GoneAs = "event", tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.host = host  # the cluster-in-a-box serves on its bridge address
        self.tls = tls  # serve HTTPS with this server context (client certs if it asks)
        self.state = ClusterState()
        self.token_reviews = TokenReviews(self.state)
        self.gone_as: GoneAs = gone_as
        self.too_large_as: TooLargeAs = "event"
        self.tokens: set[str] | None = None  # None: any (or no) token is accepted
        self.requests: deque[tuple[str, str | None]] = deque(maxlen=1000)  # (target, token)
        self.watchers: set[Watcher] = set()
        self.port = 0
        self._down = False
        self._connections: set[trio.CancelScope] = set()

    def __repr__(self) -> str:
        return (f"<FakeApiServer {self.host}:{self.port} [version {self.state.version}, "
                f"{len(self.watchers)} watches{', DOWN' if self._down else ''}]>")  # fmt: skip

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def write_kubeconfig(self, path: Path, token: str = "t") -> Path:
        """A kubeconfig at ``path`` pointing at this server with a bearer ``token``."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "f",
            "clusters": [{"name": "f", "cluster": {"server": self.url}}],
            "contexts": [{"name": "f", "context": {"cluster": "f", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": token}}],
        }))  # fmt: skip
        return path

    # -- test controls -------------------------------------------------------------
    def add(self, resource: str, obj: Obj) -> Obj:
        return self._write(resource, obj)

    modify = add  # a write to an existing key is a MODIFIED

    def delete(self, resource: str, name: str, namespace: str = "default") -> Obj:
        meta = {"name": name, "namespace": namespace}
        return self._write(resource, {"metadata": meta}, delete=True)

    def _write(self, resource: str, obj: Obj, delete: bool = False) -> Obj:
        e = self.state.write(resource, obj, delete)
        for w in list(self.watchers):
            line = w.line(e)
            if line is not None:
                self._push(w, line)
        return e.obj

    def _push(self, w: Watcher, line: bytes) -> None:
        try:
            w.send.send_nowait(line)
        except trio.WouldBlock:  # a slow watcher is cut off, as the real server does
            w.scope.cancel()
            self.watchers.discard(w)

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current version to every watch that allowed them."""
        for w in list(self.watchers):
            if w.bookmarks:
                meta = {"resourceVersion": str(self.state.version)}
                obj = {"kind": w.kind.kind, "apiVersion": w.kind.api_version, "metadata": meta}
                self._push(w, _event("BOOKMARK", obj))

    def compact(self) -> None:
        self.state.compact()

    def end_watches(self, gone: bool = False) -> None:
        """End every open watch, with a 410 ERROR event first when ``gone``."""
        for w in list(self.watchers):
            if gone:
                msg = f"too old resource version: {self.state.compacted - 1}"
                self._push(w, _event("ERROR", status(410, "Expired", msg)))
            w.send.close()
            self.watchers.discard(w)

    def checkpoint(self) -> ClusterState:
        """A backup of every object and the version (restore it with ``restore``)."""
        return copy.deepcopy(self.state)

    def restore(self, backup: ClusterState) -> None:
        """An etcd restore: the state (and versions) of ``backup``, a fresh watch cache
        (no history), and every open watch cut as the API servers restart."""
        self.state = copy.deepcopy(backup)
        self.state.compact()
        for scope in list(self._connections):
            scope.cancel()
        self.watchers.clear()

    def go_down(self) -> None:
        self._down = True
        for scope in list(self._connections):
            scope.cancel()
        self.watchers.clear()

    def go_up(self) -> None:
        self._down = False

    # -- the HTTP shell ----------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        tcp = await trio.open_tcp_listeners(0, host=self.host)
        self.port = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
        if self.tls is not None:
            listeners = [trio.SSLListener(t, self.tls, https_compatible=True) for t in tcp]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        if self._down:
            await trio.aclose_forcefully(stream)
            return
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
                while await self._one_request(conn, stream):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass  # the client went away or spoke nonsense: drop the connection
            finally:
                self._connections.discard(scope)
        await trio.aclose_forcefully(stream)

    async def _one_request(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data) and len(body) < 1024 * 1024:
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return False
        assert request is not None
        target = request.target.decode()
        auth = dict(request.headers).get(b"authorization", b"").decode() or None
        token = auth.removeprefix("Bearer ") if auth else None
        self.requests.append((target, token))
        if self.tokens is not None and token not in self.tokens:
            await _send_json(conn, stream, 401, status(401, "Unauthorized", "Unauthorized"))
        elif request.method == b"POST" and urlsplit(target).path == tokenreview.PATH:
            code, doc = self.token_reviews.review(body)
            await _send_json(conn, stream, code, doc)
        elif (pod := _one_pod(target)) is not None:
            await self._get_pod(conn, stream, *pod)
        else:
            await self._route(conn, stream, target)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _get_pod(
        self, conn: h11.Connection, stream: trio.abc.Stream, ns: str, name: str
    ) -> None:
        obj = self.state.objects["pods"].get(f"{ns}/{name}")
        if obj is None:
            msg = f'pods "{name}" not found'
            return await _send_json(conn, stream, 404, status(404, "NotFound", msg))
        await _send_json(conn, stream, 200, obj)

    async def _route(self, conn: h11.Connection, stream: trio.abc.Stream, target: str) -> None:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        doc = discovery_docs.document(url.path, self.port)
        if doc is not None:
            return await _send_json(conn, stream, 200, doc)
        parts = url.path.strip("/").split("/")
        prefix = 3 if parts[:1] == ["apis"] else 2
        rest, ns = parts[prefix:], None
        if len(rest) == 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        kind = KINDS.get(rest[0]) if len(rest) == 1 else None
        if kind is None or "/".join(parts[:prefix]) != kind_path(kind):
            msg = "the server could not find the requested resource"
            return await _send_json(conn, stream, 404, status(404, "NotFound", msg))
        try:
            sel = Selector.parse(
                kind, query.get("labelSelector", ""), query.get("fieldSelector", "")
            )
        except SelectorError as exc:
            return await _send_json(conn, stream, 400, status(400, "BadRequest", str(exc)))
        if query.get("watch") in ("true", "1"):
            return await self._watch(conn, stream, kind, ns, sel, query)
        await self._list(conn, stream, kind, ns, sel, query)

    async def _list(self, conn: h11.Connection, stream: trio.abc.Stream, kind: Kind,
                    ns: str | None, sel: Selector, query: dict[str, str]) -> None:  # fmt: skip
        objs = self.state.listing(kind.resource, ns, sel)
        version, start = self.state.version, 0
        if query.get("continue"):
            token = json.loads(base64.b64decode(query["continue"]))
            version, start = token["rv"], token["start"]
            if version < self.state.compacted:
                msg = "The provided continue parameter is too old to display a consistent list."
                return await _send_json(conn, stream, 410, status(410, "Expired", msg))
        limit = int(query.get("limit") or 0) or len(objs) + 1
        page = objs[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(version)}
        if start + limit < len(objs):
            cont = {"rv": version, "start": start + limit}
            meta["continue"] = base64.b64encode(json.dumps(cont).encode()).decode()
            meta["remainingItemCount"] = len(objs) - start - limit
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        doc = {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
               "items": items}  # fmt: skip
        await _send_json(conn, stream, 200, doc)

    async def _watch(self, conn: h11.Connection, stream: trio.abc.Stream, kind: Kind,
                     ns: str | None, sel: Selector, query: dict[str, str]) -> None:  # fmt: skip
        rv = query.get("resourceVersion", "")
        send, receive = trio.open_memory_channel[bytes](1000)
        w = Watcher(kind, ns, sel, query.get("allowWatchBookmarks") == "true", send)
        live = True
        if rv in ("", "0"):
            initial = [_event("ADDED", o) for o in self.state.listing(kind.resource, ns, sel)]
        elif int(rv) > self.state.version and self.too_large_as != "accept":
            doc = too_large(int(rv), self.state.version)
            if self.too_large_as == "status":
                return await _send_json(conn, stream, 504, doc)
            initial = [_event("ERROR", doc)]
            live = False
            send.close()
        elif int(rv) < self.state.compacted:
            msg = f"too old resource version: {rv} ({self.state.compacted})"
            if self.gone_as == "status":
                return await _send_json(conn, stream, 410, status(410, "Expired", msg))
            initial = [_event("ERROR", status(410, "Expired", msg))]
            live = False
            send.close()
        else:
            initial = [line for e in self.state.since(int(rv)) if (line := w.line(e))]
        if live:  # registered in the same step as the replay: no write can fall in between
            self.watchers.add(w)
        headers = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        for line in initial:
            await stream.send_all(conn.send(h11.Data(data=line)) or b"")
        with w.scope, trio.move_on_after(float(query.get("timeoutSeconds") or 1800)):
            async for line in receive:
                await stream.send_all(conn.send(h11.Data(data=line)) or b"")
        self.watchers.discard(w)
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def _one_pod(target: str) -> tuple[str, str] | None:
    """(namespace, name) of ``GET /api/v1/namespaces/<ns>/pods/<name>``, else None."""
    parts = urlsplit(target).path.strip("/").split("/")
    if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
        return parts[3], parts[5]
    return None


def kind_path(kind: Kind) -> str:
    return f"apis/{kind.group}/{kind.version}" if kind.group else f"api/{kind.version}"


async def _send_json(conn: h11.Connection, stream: trio.abc.Stream, code: int, doc: Obj) -> None:
    body = json.dumps(doc).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    out = conn.send(h11.Response(status_code=code, headers=headers)) or b""
    out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(out)


@asynccontextmanager
async def fake_apiserver(
    gone_as: GoneAs = "event", tls: ssl.SSLContext | None = None
) -> AsyncIterator[FakeApiServer]:
    """A running fake on 127.0.0.1 (port 0, read back as ``.port``); stopped on exit."""
    server = FakeApiServer(gone_as, tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()
