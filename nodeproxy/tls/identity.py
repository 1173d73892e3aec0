"""Workload and node identities as SPIFFE IDs.

A per-node proxy speaks for every pod on its node, so the identity it proves
on the wire must be the *workload's* (one certificate per service account),
never one shared node certificate: that was Linkerd 1's mistake, where any
compromised pod could act as any other on the same node. The proxy's own
identity (for node-to-node control traffic and as the server side of the
inbound listener) is a separate node identity.

Two shapes are accepted, both in a certificate's URI SAN::

    spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>   (workload)
    spiffe://<trust-domain>/node/<node-name>                      (node)

Parsing follows the SPIFFE ID spec (lowercase scheme and trust domain, no
port, userinfo, query or fragment, no empty/dot segments, 2048 bytes at most)
and then Kubernetes naming (namespace: DNS-1123 label; service account and
node: DNS-1123 subdomain). Anything else is an ``InvalidSpiffeId`` naming
what is wrong, so a bad certificate or a typo in a policy is reported, not
silently matched against nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
MAX_ID_BYTES = 2048

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")

IdentityKind = Literal["workload", "node"]


class InvalidSpiffeId(ValueError):
    """A string that is not a SPIFFE ID of a shape nodeproxy accepts."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"invalid SPIFFE ID {value!r}: {reason}")
        self.value = value
        self.reason = reason


def validate_trust_domain(trust_domain: str, in_id: str | None = None) -> str:
    """Return ``trust_domain`` if valid per the SPIFFE spec, else raise InvalidSpiffeId.

    ``in_id`` is the whole ID being parsed, so that the error names it.
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidSpiffeId(
            in_id if in_id is not None else trust_domain,
            "trust domain must be 1-255 chars of lowercase a-z, 0-9, '.', '-', '_'",
        )
    return trust_domain


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A parsed workload or node identity; ``str()`` gives the canonical URI.

    Build with ``SpiffeId.workload(...)`` / ``SpiffeId.node(...)`` or
    ``parse_spiffe_id(text)``; the constructor validates as well.
    """

    trust_domain: str
    kind: IdentityKind
    namespace: str | None = None
    service_account: str | None = None
    node_name: str | None = None

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        text = self._format()
        if self.kind == "workload":
            if self.node_name is not None or self.namespace is None:
                raise InvalidSpiffeId(text, "a workload identity has a namespace and no node")
            if self.service_account is None:
                raise InvalidSpiffeId(text, "a workload identity has a service account")
            _check(text, "namespace", self.namespace, _DNS_LABEL, 63)
            _check(text, "service account", self.service_account, _DNS_SUBDOMAIN, 253)
        elif self.kind == "node":
            if self.namespace is not None or self.service_account is not None:
                raise InvalidSpiffeId(text, "a node identity has no namespace/service account")
            if self.node_name is None:
                raise InvalidSpiffeId(text, "a node identity has a node name")
            _check(text, "node name", self.node_name, _DNS_SUBDOMAIN, 253)
        else:
            raise InvalidSpiffeId(text, f"unknown identity kind {self.kind!r}")
        if len(text.encode()) > MAX_ID_BYTES:
            raise InvalidSpiffeId(text, f"longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def workload(
        cls, namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> SpiffeId:
        """The identity of pods running as ``service_account`` in ``namespace``."""
        return cls(trust_domain, "workload", namespace=namespace, service_account=service_account)

    @classmethod
    def node(cls, node_name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
        """The identity of the node proxy itself on ``node_name``."""
        return cls(trust_domain, "node", node_name=node_name)

    @property
    def uri(self) -> str:
        """The canonical ``spiffe://`` URI (same as ``str()``)."""
        return self._format()

    @property
    def path(self) -> str:
        """The path part, e.g. ``/ns/default/sa/webserver``."""
        if self.kind == "workload":
            return f"/ns/{self.namespace}/sa/{self.service_account}"
        return f"/node/{self.node_name}"

    def _format(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return self._format()


def _check(text: str, what: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if len(value) > limit or not pattern.fullmatch(value):
        raise InvalidSpiffeId(
            text, f"{what} {value!r} is not a valid Kubernetes name (lowercase, <= {limit} chars)"
        )


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse ``text`` into a SpiffeId, raising InvalidSpiffeId with the reason."""
    if not isinstance(text, str):
        raise InvalidSpiffeId(repr(text), "not a string")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_ID_BYTES:
        raise InvalidSpiffeId(text[:64] + "...", f"longer than {MAX_ID_BYTES} bytes")
    if not text.startswith(SCHEME):
        raise InvalidSpiffeId(text, "scheme must be 'spiffe://' (lowercase)")
    rest = text[len(SCHEME) :]
    for bad, reason in (("?", "query"), ("#", "fragment"), ("@", "userinfo"), ("%", "escape")):
        if bad in rest:
            raise InvalidSpiffeId(text, f"a SPIFFE ID has no {reason}")
    trust_domain, slash, path = rest.partition("/")
    if ":" in trust_domain:
        raise InvalidSpiffeId(text, "a SPIFFE ID has no port")
    validate_trust_domain(trust_domain, in_id=text)
    if not slash or not path:
        raise InvalidSpiffeId(text, "missing path (expected /ns/<ns>/sa/<sa> or /node/<name>)")
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidSpiffeId(text, "empty, '.' or '..' path segment")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidSpiffeId(
                text, f"path segment {segment!r} has characters outside [A-Za-z0-9._-]"
            )
    if len(segments) == 4 and segments[0] == "ns" and segments[2] == "sa":
        return SpiffeId.workload(segments[1], segments[3], trust_domain)
    if len(segments) == 2 and segments[0] == "node":
        return SpiffeId.node(segments[1], trust_domain)
    raise InvalidSpiffeId(text, "path must be /ns/<namespace>/sa/<service-account> or /node/<name>")
