"""``FastHeaders``: h11's ``Headers`` made cheap to iterate, for the reference h11 only.

Why a module of its own: it subclasses h11's ``Headers``, and a module that
defines a subclass of an interpreted class cannot be compiled by mypyc without
``mypy_extensions`` at run time, while ``http1/events.py``, which builds the
events of every request, is compiled with the rest of the data path
(``nodeproxy/compiled.py``). This class stays interpreted; it only runs on the
reference h11 build, whose own code is interpreted too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodeproxy.http1.impl import h11

if TYPE_CHECKING:
    from h11._headers import Headers as _H11Headers
else:
    _H11Headers = h11._headers.Headers

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
