"""Events for the data path, built cheaply on either h11 build.

h11 re-validates every event it is handed; the data path builds several per
request from parts that are already valid (see the comment below), so they
are made here with ``_parsed=True`` and ready-made headers. On the reference
build, parsed heads also get ``FastHeaders`` so that iterating them is cheap;
the compiled build iterates its own ``Headers`` in C and refuses Python
subclasses, so it gets neither trick. ``codec.py`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodeproxy.http1.impl import NAME, h11

if TYPE_CHECKING:
    from h11._headers import Headers as _H11Headers
else:
    _H11Headers = h11._headers.Headers

Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]
NEED_DATA = h11.NEED_DATA
PAUSED = h11.PAUSED

Header = tuple[bytes, bytes]


class FastHeaders(_H11Headers):
    """h11's ``Headers`` (a Sequence of lowercased ``(name, value)``), iterable cheaply.

    Reference h11 only: its class has no ``__iter__``, so every ``for name,
    value in headers`` goes through ``Sequence.__iter__`` -> ``__getitem__``
    per pair, about 10x the cost of reading a list; the data path iterates
    each head several times (authority, mesh headers, routing, hop-by-hop
    rewriting), so the pairs are built once and kept, and every event the
    codecs parse carries this class instead. The compiled build refuses Python
    subclasses, and needs none: its ``Headers`` iterates in C (0.16 µs for a
    five-field head, against 0.83 µs for h11's).
    """

    __slots__ = ("_pairs",)

    def __init__(self, full_items: list[tuple[bytes, bytes, bytes]]) -> None:
        super().__init__(full_items)
        self._pairs = [(name, value) for _, name, value in full_items]

    @classmethod
    def from_pairs(cls, pairs: list[Header]) -> FastHeaders:
        """Headers whose names are already lowercase (sent as such)."""
        headers = cls.__new__(cls)
        headers._full_items = [(name, name, value) for name, value in pairs]
        headers._pairs = list(pairs)
        return headers

    def __iter__(self) -> Iterator[Header]:
        return iter(self._pairs)


# h11 re-validates the headers of every event we build (regexes, then the
# framing rules), which is a large share of a proxied request's CPU. Headers
# that came out of a codec were fully validated when parsed (Content-Length
# and Transfer-Encoding normalised too), and what the proxy adds (an IP, a hex
# id, "http", an authority that passed the request-target grammar, a Via) is
# valid by construction and never a framing header, so events built from them
# get ready headers and skip validation (``_parsed=True``, bytes only). h11
# still checks the Host rules, the method and the target.

if NAME == "h11":

    def parsed_head(event: h11.Request | h11.Response | h11.InformationalResponse) -> None:
        # Swap in the fast class, in place: the event is fresh from the parser and
        # not yet seen by anyone (h11 sets its frozen fields the same way).
        object.__setattr__(event, "headers", FastHeaders(event.headers._full_items))

    def _trusted(headers: list[Header]) -> _H11Headers:
        return FastHeaders.from_pairs(headers)

else:

    def parsed_head(event: h11.Request | h11.Response | h11.InformationalResponse) -> None:
        return None  # the compiled Headers iterates fast as it is

    def _trusted(headers: list[Header]) -> _H11Headers:
        return _H11Headers([(name, name, value) for name, value in headers])


def request_event(method: bytes, target: bytes, headers: list[Header]) -> h11.Request:
    """An outgoing request built from already-validated parts."""
    return h11.Request(method=method, target=target, headers=_trusted(headers), _parsed=True)


def response_event(status: int, reason: bytes, headers: list[Header]) -> h11.Response:
    """An outgoing response built from already-validated parts."""
    return h11.Response(status_code=status, reason=reason, headers=_trusted(headers), _parsed=True)


def informational_event(
    status: int, reason: bytes, headers: list[Header]
) -> h11.InformationalResponse:
    """An outgoing 1xx built from already-validated parts."""
    return h11.InformationalResponse(
        status_code=status, reason=reason, headers=_trusted(headers), _parsed=True
    )
