"""Whole log lines from several processes sharing one stdout pipe.

Why: the supervisor and its workers inherit the same stdout, usually a pipe
to the container runtime. The kernel keeps a pipe write whole only up to
``PIPE_BUF`` (4096 bytes on Linux); the access log writes up to 64 lines in
one go, so two workers' batches could interleave mid-line and a log shipper
would see broken JSON (``test_log_lines_stay_whole_when_workers_share_a_pipe``).
``WholeLines`` is the stdout of every process of a fleet: it writes only
complete lines, packed into writes of at most ``PIPE_BUF`` bytes (a single
line longer than that goes alone and cannot be atomic). One process
(``workers: 1``) keeps plain ``sys.stdout``.
"""

from __future__ import annotations

import io
import os
import select

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


class WholeLines(io.TextIOBase):
    """A write-only text stream on ``fd``; the only writer of its pending bytes."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self._pending = bytearray()

    def __repr__(self) -> str:
        return f"<WholeLines fd {self.fd} [{len(self._pending)} bytes pending]>"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        return self.fd

    def write(self, text: str) -> int:
        self._pending += text.encode("utf-8", "backslashreplace")
        return len(text)

    def flush(self) -> None:
        """Write every complete line now; a partial last line waits for its end."""
        end = self._pending.rfind(b"\n") + 1
        if not end:
            return
        data = bytes(self._pending[:end])
        del self._pending[:end]
        start = 0
        while start < len(data):
            stop = start + PIPE_BUF
            if stop < len(data):
                cut = data.rfind(b"\n", start, stop) + 1
                stop = cut if cut > start else data.index(b"\n", start) + 1
            self._write_all(data[start:stop])
            start = stop

    def _write_all(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]
