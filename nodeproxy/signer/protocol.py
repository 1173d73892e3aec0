"""The signer's wire format, shared by the signer and the node proxies that call it.

One call, ``POST /v1/sign`` over HTTPS, ``Authorization: Bearer <projected
service-account token>`` (audience ``nodeproxy-signer``), a JSON body::

    {"csrs": ["-----BEGIN CERTIFICATE REQUEST-----...", ...], "lifetime_seconds": 86400}

Each CSR names one SPIFFE ID as its only URI SAN; the node keeps the private
keys, the signer never sees them. The answer is 200 when at least one
identity was signed, with the refusals beside the certificates (one pod that
left the node must not block its neighbours' renewals)::

    {"node": "node-a", "issued": [{"spiffe_id": "...", "certificate": "<PEM>"}],
     "refused": [{"spiffe_id": "...", "reason": "no pod with service account ..."}]}

Everything else is an error body ``{"error": <cause>, "reason": <text>}``
with the cause also in ``x-nodeproxy-error``: 401 ``unauthenticated`` (no,
bad, expired or wrong-audience token), 403 ``forbidden`` (nothing asked for
may be signed for this caller; ``refused`` lists why per identity), 400
``bad_request``, 413 ``too_large``, 503 ``unavailable`` (the Kubernetes API
could not answer). Bodies are bounded both ways.

Also here: ``exchange``, the one-request HTTP/1.1 client on h11 that both
the signer (towards the Kubernetes API) and the node (towards the signer) use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import h11
import trio

SIGN_PATH = "/v1/sign"
HEALTH_PATH = "/healthz"
AUDIENCE = "nodeproxy-signer"
MAX_CSRS = 64  # identities per request; a node with more sends several
MAX_REQUEST_BYTES = 256 * 1024  # 64 CSRs of ~1 KiB, with room
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_HEAD_BYTES = 16 * 1024
ERROR_HEADER = "x-nodeproxy-error"


class SignerRefused(Exception):
    """A request the signer answers with an error status (and a reason for the caller)."""

    def __init__(self, status: int, cause: str, reason: str, refused: tuple[Refusal, ...] = ()):
        super().__init__(f"{status} {cause}: {reason}")
        self.status = status
        self.cause = cause
        self.reason = reason
        self.refused = refused

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"error": self.cause, "reason": self.reason}
        if self.refused:
            doc["refused"] = [r.to_json() for r in self.refused]
        return doc


def bad_request(reason: str) -> SignerRefused:
    return SignerRefused(400, "bad_request", reason)


@dataclass(frozen=True)
class SignRequest:
    csrs: tuple[bytes, ...]  # PEM
    lifetime_seconds: int | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"csrs": [c.decode("ascii") for c in self.csrs]}
        if self.lifetime_seconds is not None:
            doc["lifetime_seconds"] = self.lifetime_seconds
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, body: bytes) -> SignRequest:
        try:
            doc = json.loads(body)
        except ValueError:
            raise bad_request("the body is not JSON") from None
        csrs = doc.get("csrs") if isinstance(doc, dict) else None
        if not isinstance(csrs, list) or not csrs or not all(isinstance(c, str) for c in csrs):
            raise bad_request('expected {"csrs": ["<PEM>", ...]} with at least one CSR')
        if len(csrs) > MAX_CSRS:
            raise bad_request(f"at most {MAX_CSRS} CSRs per request, got {len(csrs)}")
        lifetime = doc.get("lifetime_seconds")
        if lifetime is not None and (type(lifetime) is not int or lifetime < 60):
            raise bad_request("lifetime_seconds must be an integer >= 60")
        try:
            pems = tuple(c.encode("ascii") for c in csrs)
        except UnicodeEncodeError:
            raise bad_request("a CSR is not ASCII PEM") from None
        return cls(pems, lifetime)


@dataclass(frozen=True)
class Refusal:
    spiffe_id: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"spiffe_id": self.spiffe_id, "reason": self.reason}


@dataclass(frozen=True)
class SignResponse:
    node: str
    issued: tuple[tuple[str, bytes], ...]  # (SPIFFE ID, certificate PEM)
    refused: tuple[Refusal, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node": self.node,
                "issued": [{"spiffe_id": s, "certificate": c.decode()} for s, c in self.issued],
                "refused": [r.to_json() for r in self.refused],
            }
        ).encode()

    @classmethod
    def from_json(cls, body: bytes) -> SignResponse:
        """Parse the signer's answer; ValueError when it is not the shape above."""
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("issued"), list):
            raise ValueError("not a signer response")
        issued = tuple((str(i["spiffe_id"]), str(i["certificate"]).encode()) for i in doc["issued"])
        refused = tuple(
            Refusal(str(r["spiffe_id"]), str(r["reason"])) for r in doc.get("refused") or ()
        )
        return cls(str(doc.get("node", "")), issued, refused)


def error_reason(body: bytes) -> tuple[str, str, tuple[Refusal, ...]]:
    """(cause, reason, refusals) of an error body; what the signer said, or the raw text."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "reason" not in doc:
        return "", body[:200].decode("utf-8", "replace").strip(), ()
    try:
        refused = tuple(Refusal(str(r["spiffe_id"]), str(r["reason"])) for r in doc["refused"])
    except (KeyError, TypeError):
        refused = ()
    return str(doc.get("error", "")), str(doc["reason"]), refused


class ExchangeError(Exception):
    """The peer broke the connection, spoke bad HTTP or sent too much."""


async def exchange(
    stream: trio.abc.Stream,
    *,
    method: str,
    authority: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    max_response: int = MAX_RESPONSE_BYTES,
) -> tuple[int, bytes]:
    """Send one request on ``stream`` and read the whole (bounded) answer: (status, body).

    The caller owns the deadline (``trio.fail_after``) and closes the stream.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    all_headers = [("Host", authority), ("User-Agent", "nodeproxy"), *headers]
    if method != "GET" or body:
        all_headers.append(("Content-Length", str(len(body))))
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=all_headers))
        out += (conn.send(h11.Data(data=body)) or b"") if body else b""
        await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
        status, parts, size = 0, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_response:
                    raise ExchangeError(f"response body larger than {max_response} bytes")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise ExchangeError("the connection closed before the answer")
    except h11.ProtocolError as exc:
        raise ExchangeError(f"bad HTTP: {exc}") from exc
    except trio.BrokenResourceError as exc:
        raise ExchangeError(f"connection broken: {exc!r}") from exc
