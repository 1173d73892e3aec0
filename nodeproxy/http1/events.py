"""Events for the data path, built cheaply on either h11 build.

h11 re-validates every event it is handed; the data path builds several per
request from parts that are already valid (see the comment below), so they
are made here with ``_parsed=True`` and ready-made headers. On the reference
build, parsed heads also get ``FastHeaders`` (``fast_headers.py``) so that
iterating them is cheap; the compiled build iterates its own ``Headers`` in C
and refuses Python subclasses, so it gets neither trick. ``codec.py``
re-exports these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from nodeproxy.http1.fast_headers import FastHeaders, Header
from nodeproxy.http1.impl import NAME, h11

if TYPE_CHECKING:  # annotations only (mypyc compiles no TYPE_CHECKING else-branch)
    from h11._headers import Headers as _H11Headers

Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]
NEED_DATA = h11.NEED_DATA
PAUSED = h11.PAUSED


# h11 re-validates the headers of every event we build (regexes, then the
# framing rules), which is a large share of a proxied request's CPU. Headers
# that came out of a codec were fully validated when parsed (Content-Length
# and Transfer-Encoding normalised too), and what the proxy adds (an IP, a hex
# id, "http", an authority that passed the request-target grammar, a Via) is
# valid by construction and never a framing header, so events built from them
# get ready headers and skip validation (``_parsed=True``, bytes only). h11
# still checks the Host rules, the method and the target.

_FAST_HEADERS: Final = NAME == "h11"  # the reference build iterates its Headers slowly


def parsed_head(event: h11.Request | h11.Response | h11.InformationalResponse) -> None:
    """Give a parsed head ``FastHeaders`` on the reference build (the compiled one's
    ``Headers`` iterates fast as it is)."""
    if _FAST_HEADERS:
        # Swap in the fast class, in place: the event is fresh from the parser and
        # not yet seen by anyone (h11 sets its frozen fields the same way).
        object.__setattr__(event, "headers", FastHeaders(event.headers._full_items))


def _trusted(headers: list[Header]) -> _H11Headers:
    if _FAST_HEADERS:
        return FastHeaders.from_pairs(headers)
    return h11._headers.Headers([(name, name, value) for name, value in headers])


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


def body_chunk(event: h11.Data) -> bytes | bytearray:
    """A parsed ``Data`` event's bytes, as the parser left them.

    h11 (both builds) hands out body chunks as ``bytearray`` slices of its receive
    buffer although ``Data.data`` is annotated ``bytes``. The compiled data path checks
    annotations when it reads an attribute, strictly (mypyc forces ``--strict-bytes``:
    a bytearray is not bytes), so a typed read of ``event.data`` fails there with
    "bytes object expected; got bytearray". Read untyped here, checked as what it is.
    """
    data: Any = getattr(event, "data")  # noqa: B009 (a typed read is the bug)
    return data  # type: ignore[no-any-return]
