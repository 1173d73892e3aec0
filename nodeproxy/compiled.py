"""The compiled build: nodeproxy's data path compiled to C with mypyc.

Why: once the codec is compiled (h11-mypyc, the ``fast`` extra), what a proxied
request costs above a bare relay is nodeproxy's own Python: routing, balancing,
admission, header rewriting, stats and the access line, about 40 µs a request
spread over some hundred functions, none of them worth more than a few percent
on its own (bench/README.md, "Where the time goes"). The data path is typed
Python that passes ``mypy --strict``, which is what mypyc (part of mypy)
compiles: each module below becomes a C extension that Python imports in place
of the ``.py`` beside it (an extension wins over source in the same folder). The
code stays the same; the interpreter overhead goes. Measured with
``bench/throughput.py`` (both on h11-mypyc): 1.21 x the requests per second of the
interpreted data path, 17 % less CPU per request.

Only the per-request modules are compiled. Config, discovery, the admin, the
CLI, TLS, the signer and the workers run per change, not per request, and stay
interpreted (tracebacks there keep their lines).

Build: ``python -m nodeproxy.compiled ROOT`` compiles the ``MODULES`` of the
``nodeproxy`` package under ``ROOT`` (a copy of the source tree, or a fresh
``pip install --target`` folder) and puts the extensions beside them. It needs
mypy, setuptools and a C compiler. The Dockerfile builds the image this way, and
``make compiled`` builds ``build/compiled`` for the suite's third pass; both start
from a fresh tree every time. Not offered: compiling a pip-managed install in
place. pip does not know the extensions, so an upgrade would leave them shadowing
the new ``.py`` files (a wheel that lists them is the way to do that).
``status`` says which build is importable; ``--version``, the start line,
``/config_dump`` and ``nodeproxy_build_info`` show it.

What mypyc needs from code in ``MODULES`` (the reason for a few shapes):
a compiled class cannot be subclassed by interpreted code and an overriding
``async def`` confuses its calls, so behaviour is passed in as callables
(``server/listener.Acceptor``'s ``handle``); exceptions derive from
``Exception``, not from other builtins; annotations are checked at run time,
so a test fake must be the real type.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The per-request path, in the order a request meets it.
MODULES = (
    "nodeproxy.server.listener",
    "nodeproxy.server.connection_limits",
    "nodeproxy.server.connection",
    "nodeproxy.server.downstream",
    "nodeproxy.server.handler",
    "nodeproxy.server.admission",
    "nodeproxy.server.inbound",
    "nodeproxy.server.exchange",
    "nodeproxy.server.request_body",
    "nodeproxy.server.relay",
    "nodeproxy.server.retrying",
    "nodeproxy.server.accounting",
    "nodeproxy.netio",
    "nodeproxy.http1.codec",
    "nodeproxy.http1.events",
    "nodeproxy.http1.headers",
    "nodeproxy.http1.forwarding",
    "nodeproxy.pipeline",
    "nodeproxy.routing.authority",
    "nodeproxy.routing.match",
    "nodeproxy.routing.router",
    "nodeproxy.routing.actions",
    "nodeproxy.routing.header_edits",
    "nodeproxy.routing.cors",
    "nodeproxy.traffic.state",
    "nodeproxy.traffic.attempt",
    "nodeproxy.traffic.routes",
    "nodeproxy.traffic.sources",
    "nodeproxy.traffic.explain",
    "nodeproxy.balancing.feedback",
    "nodeproxy.balancing.policies",
    "nodeproxy.balancing.round_robin",
    "nodeproxy.balancing.least_request",
    "nodeproxy.balancing.p2c_ewma",
    "nodeproxy.balancing.weighted",
    "nodeproxy.balancing.locality",
    "nodeproxy.resilience.ratelimit",
    "nodeproxy.resilience.fairness",
    "nodeproxy.resilience.overload",
    "nodeproxy.resilience.outlier",
    "nodeproxy.resilience.breaker",
    "nodeproxy.resilience.budget",
    "nodeproxy.resilience.health",
    "nodeproxy.resilience.retry",
    "nodeproxy.upstream.pool",
    "nodeproxy.upstream.connection",
    "nodeproxy.upstream.endpoint_pool",
    "nodeproxy.mesh.outbound",
    "nodeproxy.mesh.state",
    "nodeproxy.discovery.snapshot",
    "nodeproxy.runtime",
    "nodeproxy.access_log",
    "nodeproxy.stats.registry",
    "nodeproxy.errors",
)


def _is_extension(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The ``MODULES`` that import as compiled extensions here (finds, does not import)."""
    return [module for module in MODULES if _is_extension(module)]


def status() -> str:
    """``compiled``, ``interpreted``, or ``partial`` (some modules compiled: a stale or
    broken build, which still runs, module by module)."""
    found = len(compiled_modules())
    if found == len(MODULES):
        return "compiled"
    return "interpreted" if found == 0 else "partial"


def sources(root: Path) -> list[str]:
    """The ``.py`` files of ``MODULES`` under ``root``, relative to it."""
    paths = [Path(*module.split(".")).with_suffix(".py") for module in MODULES]
    missing = [str(p) for p in paths if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(f"not under {root}: {', '.join(missing)}")
    return [str(p) for p in paths]


_MYPY_INI = "[mypy]\n\n[mypy-yaml.*]\nignore_missing_imports = True\n"


def build(root: Path) -> None:
    """Compile ``MODULES`` for the ``nodeproxy`` package under ``root``.

    mypyc works in a scratch copy of the package (its ``build/`` and caches never
    touch ``root``, which may be a site-packages holding other packages); only the
    extensions it makes are copied into ``root``: one beside each module's ``.py``,
    and the shared one at the top. A source tree is refused: extensions there would
    shadow every later edit of the ``.py`` files (``make compiled`` builds a copy).
    """
    files = sources(root)
    if (root / "pyproject.toml").exists():
        raise FileExistsError(
            f"{root} is a source tree: its extensions would shadow edits to the .py files;"
            " compile a copy (make compiled) or an installed package"
        )
    with tempfile.TemporaryDirectory(prefix="nodeproxy-mypyc-") as tmp:
        scratch = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(root / "nodeproxy", scratch / "nodeproxy", ignore=ignore)
        # mypyc type-checks what the modules import; pyyaml (config only) ships no types
        (scratch / "mypy.ini").write_text(_MYPY_INI)
        subprocess.run([sys.executable, "-m", "mypyc", *files], cwd=scratch, check=True)
        made = [p for p in scratch.rglob("*.so") if p.relative_to(scratch).parts[0] != "build"]
        for path in made:
            shutil.copy2(path, root / path.relative_to(scratch))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nodeproxy.compiled ROOT", file=sys.stderr)
        return 2
    root = Path(args[0])
    try:
        build(root)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"nodeproxy.compiled: {exc}", file=sys.stderr)
        return 1
    print(f"compiled {len(MODULES)} modules under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
