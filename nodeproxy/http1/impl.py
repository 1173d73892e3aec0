"""Which build of h11 frames the data path: the reference ``h11`` or the compiled ``h11-mypyc``.

``h11-mypyc`` is h11's own code with annotations exact enough for mypyc to
compile it; it installs as the package ``h11_mypyc`` beside ``h11`` (the extra
``nodeproxy[fast]``) and has the same API, but its classes are its own: an
``h11.Data`` is not an ``h11_mypyc.Data``. So the choice is made once per
process, before any data-path module binds the name, and every module that
builds or inspects events imports ``h11`` from here instead of importing the
package itself. Code with its own, private HTTP exchanges (the admin server,
the Kubernetes client, the demo greeter) keeps plain ``h11``: none of its
events meet the data path's.

The choice comes from ``NODEPROXY_CODEC`` (``auto``, the default, picks the
compiled build when it is importable; ``h11`` or ``h11-mypyc`` force one).
The config's top-level ``codec`` is honoured by ``nodeproxy run``, which
restarts itself with the variable set when the two disagree (``cli.py``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from nodeproxy.config.model import CODEC_ENV, CODEC_NAMES

ENV = CODEC_ENV
CODECS = CODEC_NAMES
_PACKAGES = {"h11": "h11", "h11-mypyc": "h11_mypyc"}


class CodecUnavailable(RuntimeError):
    """The requested build is not installed (``pip install 'nodeproxy[fast]'``)."""


def choose(requested: str) -> tuple[str, ModuleType]:
    """(codec name, module) for ``auto``, ``h11`` or ``h11-mypyc``."""
    requested = requested.strip().lower() or "auto"
    if requested not in CODECS:
        raise CodecUnavailable(f"{ENV}={requested!r}: choose one of {', '.join(CODECS)}")
    if requested == "auto":
        try:
            return "h11-mypyc", importlib.import_module("h11_mypyc")
        except ImportError:
            return "h11", importlib.import_module("h11")
    try:
        return requested, importlib.import_module(_PACKAGES[requested])
    except ImportError as exc:
        raise CodecUnavailable(
            f"{ENV}={requested}: {exc.name} is not installed (pip install 'nodeproxy[fast]')"
        ) from exc


def version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "?"))


if TYPE_CHECKING:  # both builds have h11's API; type-check against the reference
    import h11 as h11

    NAME: str
else:
    NAME, h11 = choose(os.environ.get(ENV, "auto"))

VERSION = version(h11)
