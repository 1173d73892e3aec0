"""Writing key material: the final mode from the first byte, and no silent overwrite.

A private key that exists for a moment with the umask's 0644 can be read in
that moment; ``os.chmod`` after the write is too late. So files are created
with ``os.open(..., O_EXCL, mode)``, and a forced replacement is written to a
sibling temp file and renamed over the old one (atomic on POSIX: a reader
sees the old file or the new one, never half of either).
"""

from __future__ import annotations

import os
from pathlib import Path


class RefusedOverwrite(Exception):
    """The target exists and ``force`` was not given."""


def write_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (no chmod window).

    Without ``force`` an existing file is an error (O_EXCL); with it the new
    content goes to a sibling temp file that atomically replaces the old one.
    """
    target = path.with_name(f".{path.name}.tmp-{os.getpid()}") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise RefusedOverwrite(f"{path} exists; refusing to overwrite it (use --force)") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widen beyond `mode`
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if force:
            os.replace(target, path)
    except BaseException:
        if force:
            target.unlink(missing_ok=True)
        raise
