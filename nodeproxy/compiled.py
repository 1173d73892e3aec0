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
``bench/throughput.py`` (both on h11-mypyc): 1.30 x the requests per second of the
interpreted data path, 23 % less CPU per request (1.21 x and 17 % before the per-request
classes and ``Final`` names described below).

Only the per-request modules are compiled. Config, discovery, the admin, the
CLI, TLS, the signer and the workers run per change, not per request, and stay
interpreted (tracebacks there keep their lines).

Build: the wheel. ``setup.py`` hands the ``.py`` files of ``MODULES`` to mypyc
(``mypycify``), so a regular wheel (``pip install 'nodeproxy[fast]'``, ``pip wheel``,
``python -m build``, the Dockerfile) carries one extension beside each module's
``.py`` and mypyc's shared library ``nodeproxy__mypyc`` at the top, all listed in
its RECORD: pip's upgrade and uninstall remove them with the ``.py`` files, so no
stale extension shadows newer source. ``NODEPROXY_COMPILE`` chooses: ``auto``
(default) compiles when a C compiler and the Python headers are there, else
builds the interpreted wheel with one warning line; ``1`` fails the build
instead; ``0`` never compiles. Editable installs never compile (extensions in a
source tree would shadow every later edit). ``make compiled`` builds that wheel
for the suite's third pass and the benchmark.
``status`` says which build is importable; ``--version``, the start line,
``/config_dump`` and ``nodeproxy_build_info`` show it.

What mypyc needs from code in ``MODULES`` (the reason for a few shapes):
a compiled class cannot be subclassed by interpreted code and an overriding
``async def`` confuses its calls, so behaviour is passed in as callables
(``server/listener.Acceptor``'s ``handle``); exceptions derive from
``Exception``, not from other builtins; annotations are checked at run time,
so a test fake must be the real type. Objects made per request are plain classes
with an explicit ``__init__``: a dataclass's generated ``__init__`` runs
interpreted even in a compiled module. Module attributes read per request
(``h11.DONE``, trio's checkpoints) are bound once to ``Final`` names, which
mypyc keeps as C statics instead of a dict lookup and a getattr per use.
mypyc forces strict bytes: a ``bytearray`` where the annotation says ``bytes``
fails the read (h11's body chunks are such: ``http1/events.body_chunk`` reads
them). A compiled class's attributes are descriptors, not their defaults
(``config/resilience.py`` reads ``RetryConfig``'s from an instance).

The compiler is mypy's pinned version (``pyproject.toml``, build requirements).
mypy 2.4.1 replaced 1.18.2 because of its awaits: 1.18.2 resumed every compiled
``await`` level by calling the inner coroutine's ``send`` by name (a method
lookup and argument parsing, ~80 ns a level a resume, about 3 resumes a request
through 7 levels), 2.4.1 calls the generator helper directly (~12 ns a level):
533k instead of 545k instructions a request, CPU per request over the bare relay
1.20-1.23 -> 1.16 saturated (bench/README.md, "Where the time goes").
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

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
    "nodeproxy.config.model_routes",
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
