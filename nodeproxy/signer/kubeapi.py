"""The three Kubernetes API calls the signer makes, on trio + h11.

- ``POST /apis/authentication.k8s.io/v1/tokenreviews``: is this token valid
  for our audience, and whose is it (RBAC: ``tokenreviews: create``);
- ``GET /api/v1/namespaces/<ns>/pods/<name>``: the token's pod, for its node
  when the token does not carry one (``pods: get``);
- ``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>``: the pods on the
  caller's node right now, paged (``pods: list``).

Read fresh for every signing request, never cached: "has a pod on that node
right now" must not be answered from a minute ago. Each call has a deadline
(waiting for a slot included) and a bounded answer; at most ``concurrency``
run at once, so a burst of node restarts queues here instead of stampeding
the API server, and what waits too long is a 503 the node retries. Any failure
to get an answer is a 503 ``unavailable`` for the node, which retries.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

import trio

from nodeproxy.discovery.kubernetes.access import ApiAccess
from nodeproxy.discovery.kubernetes.apiclient import open_api_stream
from nodeproxy.signer.authorize import account_of, review_body
from nodeproxy.signer.protocol import ExchangeError, SignerRefused, exchange

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
PAGE_SIZE = 500
MAX_PAGE_BYTES = 16 * 1024 * 1024  # 500 pods with big specs stay well below
MAX_PAGES = 100  # 50 000 pods on one node is not a node


def _unavailable(reason: str) -> SignerRefused:
    return SignerRefused(503, "unavailable", f"the Kubernetes API did not answer: {reason}")


class KubeApi:
    """The signer's view of the API server (``access``: in-cluster or a kubeconfig)."""

    def __init__(self, access: ApiAccess, *, timeout: float = 10.0, concurrency: int = 16) -> None:
        self.access = access
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<KubeApi {self.access!r} [{self._limiter.borrowed_tokens} calls in flight]>"

    async def review(self, token: str, audience: str) -> dict[str, Any]:
        """The TokenReview answer (its ``status`` says whether the token is good)."""
        body = json.dumps(review_body(token, audience)).encode()
        status, doc = await self._call("POST", TOKENREVIEWS, body, 64 * 1024)
        if status not in (200, 201) or not isinstance(doc, dict):
            raise _unavailable(f"TokenReview answered {status}: {_message(doc)}")
        return doc

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist."""
        target = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
        status, doc = await self._call("GET", target, b"", 1024 * 1024)
        if status == 404:
            return None
        if status != 200 or not isinstance(doc, dict):
            raise _unavailable(f"GET pod {namespace}/{name} answered {status}: {_message(doc)}")
        return doc

    async def accounts_on_node(self, node: str) -> set[tuple[str, str]]:
        """(namespace, service account) of every running pod on ``node``."""
        accounts: set[tuple[str, str]] = set()
        selector = quote(f"spec.nodeName={node}", safe="")
        cont = ""
        for _ in range(MAX_PAGES):
            target = f"/api/v1/pods?fieldSelector={selector}&limit={PAGE_SIZE}"
            if cont:
                target += f"&continue={quote(cont, safe='')}"
            status, doc = await self._call("GET", target, b"", MAX_PAGE_BYTES)
            if status != 200 or not isinstance(doc, dict):
                raise _unavailable(f"listing the pods of {node} answered {status}: {_message(doc)}")
            for pod in doc.get("items") or ():
                if isinstance(pod, dict) and (account := account_of(pod)) is not None:
                    accounts.add(account)
            cont = str((doc.get("metadata") or {}).get("continue") or "")
            if not cont:
                return accounts
        raise _unavailable(f"more than {MAX_PAGES} pages of pods on node {node}")

    async def _call(self, method: str, target: str, body: bytes, limit: int) -> tuple[int, Any]:
        try:
            token = self.access.bearer_token()
        except (OSError, ValueError) as exc:
            raise _unavailable(f"cannot read the signer's own token: {exc}") from exc
        path = target.split("?")[0]
        headers = [("Accept", "application/json")]
        if body:
            headers.append(("Content-Type", "application/json"))
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        try:
            with trio.fail_after(self.timeout):  # the wait for a slot counts too
                async with self._limiter:
                    stream = await self._connect()
                    try:
                        status, raw = await exchange(
                            stream, method=method, authority=self.access.authority,
                            target=target, headers=headers, body=body, max_response=limit,
                        )  # fmt: skip
                    finally:
                        await trio.aclose_forcefully(stream)
        except trio.TooSlowError:
            raise _unavailable(f"{method} {path}: no answer in {self.timeout:g}s") from None
        except (ExchangeError, OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise _unavailable(f"{method} {path}: {exc}") from None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None

    async def _connect(self) -> trio.abc.Stream:
        if self._ssl is None and self.access.tls:
            self._ssl = self.access.ssl_context()
        return await open_api_stream(self.access, self._ssl)


def _message(doc: Any) -> str:
    """The ``message`` of a Kubernetes ``Status``, for a 503's reason."""
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:200]
    return "no Status message"
