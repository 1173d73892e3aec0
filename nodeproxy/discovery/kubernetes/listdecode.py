"""A list response decoded item by item as its bytes arrive (sans-I/O).

Why: a list page is one JSON document, and ``json.loads`` of a whole page of
500 Nodes holds the body (~10 MiB) *and* every decoded object (~5x that) at
once, on every node of the cluster at the same moment during a relist. The
reflector instead feeds the body's chunks here and gets each item as soon as it
is complete, projects it to a small record (``project.py``) and drops it, so a
page costs at most one item plus the unparsed tail of the last chunk.

The API server writes ``{"kind": ..., "apiVersion": ..., "metadata": {...},
"items": [...]}``. The top level is walked key by key with the standard
library's decoder (``raw_decode``); every value but ``items`` is small and
decoded whole; ``items`` is decoded one element at a time. A value that does
not decode yet is assumed to be still arriving until the body ends, and the
text held for one value is capped (``max_item``).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class ListDecodeError(ValueError):
    """The body is not a Kubernetes list, or one item is over the cap."""


class ListDecoder:
    """Feed bytes, get complete items; ``finish`` returns the list's metadata."""

    def __init__(self, max_item: int) -> None:
        self.max_item = max_item
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._state = "start"  # start -> key -> colon -> value | items -> after -> end
        self._key = ""
        self.fields: dict[str, Any] = {}  # the top-level values other than items
        self.count = 0  # items decoded so far

    def __repr__(self) -> str:
        return f"<ListDecoder [{self._state}, {self.count} items, {len(self._buf)} chars held]>"

    def feed(self, data: bytes) -> list[Any]:
        """The items that ``data`` completed, in order."""
        try:
            self._buf = self._buf[self._pos :] + self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise ListDecodeError(f"list body is not UTF-8: {exc}") from exc
        self._pos = 0
        items = self._run(final=False)
        if len(self._buf) - self._pos > self.max_item:
            raise ListDecodeError(f"one list value is longer than {self.max_item} bytes")
        return items

    def finish(self) -> list[Any]:
        """The last items; raises unless the document ended completely."""
        try:
            self._buf = self._buf[self._pos :] + self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise ListDecodeError(f"list body is not UTF-8: {exc}") from exc
        self._pos = 0
        items = self._run(final=True)
        if self._state != "end" or self._buf[self._pos :].strip():
            raise ListDecodeError(f"list body ended early or has trailing data ({self._state})")
        return items

    def _skip_ws(self) -> bool:
        self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
        return self._pos < len(self._buf)

    def _expect(self, chars: str) -> str:
        c = self._buf[self._pos]
        if c not in chars:
            raise ListDecodeError(f"list body: expected one of {chars!r}, got {c!r}")
        self._pos += 1
        return c

    def _value(self, final: bool) -> tuple[bool, Any]:
        """(True, value) when the next value is complete; (False, None) to wait for more."""
        try:
            value, end = _DECODER.raw_decode(self._buf, self._pos)
        except json.JSONDecodeError as exc:
            if final:
                raise ListDecodeError(f"list body is not JSON: {exc}") from exc
            return False, None
        if end == len(self._buf) and not final and isinstance(value, int | float):
            return False, None  # a number may go on in the next chunk
        self._pos = end
        return True, value

    def _take(self, char: str, state: str) -> bool:
        """If ``char`` comes next, consume it and go to ``state``."""
        if self._buf[self._pos] != char:
            return False
        self._pos += 1
        self._state = state
        return True

    def _run(self, final: bool) -> list[Any]:
        items: list[Any] = []
        while self._state != "end" and self._skip_ws():
            state = self._state
            if state == "start":
                self._expect("{")
                self._state = "key"
            elif state == "key":
                if self._take("}", "end"):
                    continue
                ok, key = self._value(final)
                if not ok:
                    break
                if not isinstance(key, str):
                    raise ListDecodeError("list body: an object key is not a string")
                self._key, self._state = key, "colon"
            elif state == "colon":
                self._expect(":")
                self._state = "value"
            elif state == "value":
                if self._key == "items" and self._take("[", "item"):
                    continue
                ok, value = self._value(final)
                if not ok:
                    break
                self.fields[self._key] = value
                self._state = "after"
            elif state == "item":
                if self._take("]", "after"):
                    continue
                ok, item = self._value(final)
                if not ok:
                    break
                items.append(item)
                self.count += 1
                self._state = "item_sep"
            elif state == "item_sep":
                self._state = "item" if self._expect(",]") == "," else "after"
            else:  # after a top-level value
                self._state = "key" if self._expect(",}") == "," else "end"
        return items
