"""A listener's forwarding-header rules, decided once: Envoy's connection manager semantics.

Envoy's ``HttpConnectionManager`` has three knobs for the headers a proxy
adds on the way up, and ``ListenerConfig`` carries them under Envoy's names:

- ``use_remote_address``: this proxy is the edge of the trusted network, so
  the peer of the connection is appended to ``x-forwarded-for``. Off
  (Envoy's default) the header passes untouched and none is made up.
- ``xff_num_trusted_hops``: how many proxies in front are trusted. It picks
  which address is the client's (``forwarded_client``) and, with
  ``use_remote_address``, whether an incoming ``x-forwarded-proto`` is
  believed: from an untrusted peer (no trusted hop) Envoy replaces it with
  the scheme of the connection; otherwise it is kept and set only when absent.
- ``via``: appended to the request and response ``Via`` when set; unset
  (Envoy's default) adds none.

The native format appends to XFF and adds ``Via: 1.1 nodeproxy`` (its
defaults), but always keeps an incoming ``x-forwarded-proto``
(``trust_forwarded_proto``): behind an ingress that terminated TLS, the pod
must still see ``https``, and nothing in the mesh decides on that header.

``Forwarding.of(listener)`` is built once per listener; the per-request code
(``headers.upstream_request_headers``) reads four attributes and allocates
nothing more than before. The native default is the shared ``NATIVE``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodeproxy.config.model import ListenerConfig

Header = tuple[bytes, bytes]

VIA = b"1.1 nodeproxy"


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What to add on the way up (and ``via`` on the way down)."""

    append_xff: bool = True  # use_remote_address: the peer joins x-forwarded-for
    trusted_hops: int = 0  # xff_num_trusted_hops
    via: bytes | None = VIA
    keep_proto: bool = True  # an incoming x-forwarded-proto is kept (else: the scheme)
    scheme: bytes = b"http"  # of the downstream connection

    @classmethod
    def of(cls, listener: ListenerConfig, scheme: bytes = b"http") -> Forwarding:
        untrusted_peer = listener.use_remote_address and listener.xff_num_trusted_hops == 0
        fw = cls(
            append_xff=listener.use_remote_address,
            trusted_hops=listener.xff_num_trusted_hops,
            via=None if listener.via is None else listener.via.encode("latin-1"),
            keep_proto=listener.trust_forwarded_proto or not untrusted_peer,
            scheme=scheme,
        )
        return NATIVE if fw == NATIVE else fw

    @property
    def reads_xff(self) -> bool:
        """Whether the client's address may come from ``x-forwarded-for``."""
        return self.trusted_hops > 0 or not self.append_xff


NATIVE = Forwarding()


def forwarded_client(headers: Iterable[Header], peer: str, fw: Forwarding) -> str:
    """The client's address as Envoy takes it (its "downstream remote address").

    With ``use_remote_address`` the peer, unless ``trusted_hops`` proxies stand
    in front: then the entry they appended, ``trusted_hops - 1`` from the end
    of the incoming ``x-forwarded-for``. Without, the entry ``trusted_hops``
    from the end (the last one by default). A list too short or an entry that
    is no IP address leaves the peer.
    """
    skip = fw.trusted_hops - 1 if fw.append_xff else fw.trusted_hops
    if skip < 0:
        return peer
    entries: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            entries.extend(value.split(b","))
    if skip >= len(entries):
        return peer
    candidate = entries[-1 - skip].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer
