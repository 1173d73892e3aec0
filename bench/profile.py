"""Where nodeproxy's time per request goes: cProfile of `nodeproxy run`, grouped by layer.

Why: bench/instructions.py says how much nodeproxy costs against the bare relay; this says
where. cProfile attributes each Python function's own time (tottime); the script sums it by
the layer the function belongs to (the codec, trio's I/O and scheduling, the connection loop,
the pipeline, the upstream pool, the access line, ...) and prints each layer's share and
microseconds per request, and the heaviest functions. cProfile slows every Python call by a
similar amount, so read the shares, not the absolute microseconds; compiled code (h11-mypyc)
shows as the few Python-visible calls into it.

How: nginx answers a fixed 200 from memory (as in bench/throughput.py); nodeproxy runs under
`python -m cProfile -o <out>/profile.<codec>.prof -m nodeproxy run` with the access log on;
a warm-up, then N keep-alive requests over C connections (this script's threads), SIGINT; the
profile is written on exit. Counts include start-up and the warm-up (small against N).
    .venv/bin/python bench/profile.py [--codec h11-mypyc] [--requests 20000] [--connections 8]
"""

from __future__ import annotations

import argparse
import pstats
import shlex
import signal
import sys
from pathlib import Path

from harness import Processes, free_port, relative, wait_http_ok
from instructions import load
from targets import BENCH, FAST, TARGET_PATH
from throughput import nginx_argv, nodeproxy_config, render, with_codec

from nodeproxy.demo.config import DEMO_SERVICE

# First match wins: (layer, substrings of "file:function").
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec: h11 / h11-mypyc (parse, serialise)",
     ("/h11/", "/h11_mypyc/", "nodeproxy/http1/", "of 'Connection' objects")),
    ("trio: I/O, scheduling, cancel scopes", ("/trio/", "/outcome/", "nodeproxy/netio.py")),
    ("access line (render, buffered write)", ("access_log", "logs.py")),
    ("connection loop, exchange, relay", ("nodeproxy/server/",)),
    ("pipeline: route, policy, retries, headers", ("nodeproxy/pipeline", "nodeproxy/routing/")),
    ("upstream pool, balancer, outlier, breaker", ("nodeproxy/upstream/", "nodeproxy/balancing/",
                                                   "nodeproxy/resilience/", "nodeproxy/traffic/")),
    ("stats", ("stats",)),
    ("sockets and syscalls (C)", ("method 'recv", "method 'send", "posix.read", "posix.write",
                                  "epoll", "method 'accept")),
)  # fmt: skip


def layer_of(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    for name, needles in LAYERS:
        if any(n in where for n in needles):
            return name
    return "other (builtins, nodeproxy elsewhere)"


def summarise(path: Path, requests: int, top: int) -> str:
    stats = pstats.Stats(str(path))
    table: dict[str, float] = {}
    funcs: list[tuple[float, str]] = []
    raw = stats.stats  # type: ignore[attr-defined]  # {key: (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in raw.values())
    for key, (_, calls, tottime, _, _) in raw.items():
        table[layer_of(key)] = table.get(layer_of(key), 0.0) + tottime
        funcs.append(
            (tottime, f"{Path(key[0]).name}:{key[1]} {key[2]} ({calls // requests or '<1'}/req)")
        )
    lines = ["| layer | share of profiled time | µs/request (under cProfile) |", "|---|---:|---:|"]
    for name, secs in sorted(table.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {secs / total:.1%} | {secs / requests * 1e6:.1f} |")
    lines += ["", f"heaviest {top} functions by own time:"]
    for secs, where in sorted(funcs, reverse=True)[:top]:
        lines.append(f"  {secs / total:6.1%}  {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default=FAST, choices=("h11", FAST))
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=BENCH / "out")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "tmp").mkdir(parents=True, exist_ok=True)
    procs = Processes(args.out)
    prof = args.out / f"profile.{args.codec}.prof"
    prof.unlink(missing_ok=True)
    try:
        up_port, port = free_port(), free_port()
        nginx = procs.start(
            "upstream", nginx_argv(render("nginx-upstream", args.out, port=up_port), args.out, 0)
        )
        wait_http_ok(up_port, nginx, TARGET_PATH, DEMO_SERVICE)
        config = nodeproxy_config(args.out / "profile.yaml", up_port, port, access_log=True)
        run = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "nodeproxy", "run",
               "--config", str(config)]  # fmt: skip
        proxy = procs.start("nodeproxy-profiled", with_codec(args.codec, run))
        wait_http_ok(port, proxy, TARGET_PATH, DEMO_SERVICE)
        load(port, args.warmup, args.connections)
        load(port, args.requests, args.connections)
        proxy.send_signal(signal.SIGINT)  # drain and exit 0: cProfile writes the profile
        proxy.wait(timeout=60)
    finally:
        procs.stop_all()
    print(f"nodeproxy ({args.codec}), {args.requests} keep-alive requests over {args.connections}"
          " connections, access log on; cProfile own time by layer:\n")  # fmt: skip
    print(summarise(prof, args.requests + args.warmup, args.top))
    print("\nreproduce:\n    " + relative(shlex.join([".venv/bin/python", "bench/profile.py",
          "--codec", args.codec, "--requests", str(args.requests)])))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
