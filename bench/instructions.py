"""Instructions per request of the bare relay and nodeproxy on each codec, counted by callgrind.

Why: CPU time per request read from /proc (bench/throughput.py) moves by tens of percent on a
shared VM, with whatever else runs on the core, and hardware performance counters are not
available on these machines. Callgrind counts the user-space instructions a process executes:
the same work gives the same count within about a percent, whatever the neighbours do, so a
change of a few percent in nodeproxy's own cost shows up run after run.

How: the upstream is nginx answering a fixed 200 from memory, as in bench/throughput.py, and the
requests are the same (keep-alive `GET /hello/bench`, `Host: bdgreeter`). Each target in turn
runs under `valgrind --tool=callgrind --instr-atstart=no` with PYTHONHASHSEED=0, so start-up
and imports are not counted and string hashing does the same work every run; a warm-up of
keep-alive requests, then `callgrind_control -i on PID`, N requests over C keep-alive
connections (each sends its next request when the previous answer is in), then
`callgrind_control -i off PID`, SIGINT; callgrind writes `totals:` when the process exits.

What it does not count: the kernel (send, recv, epoll: the same per request for every Python
target here, a larger share of nginx's cost), and cycles: an instruction of the interpreter's
loop and one of compiled h11 do not cost the same time. Read it for nodeproxy against the bare
relay on the same codec, and for before/after a change; the throughput run stays the reference.

Loopback only; the load generator is this script (threads, blocking sockets). Every process is
stopped on exit, on error, on Ctrl-C and on SIGTERM.
    .venv/bin/python bench/instructions.py [--requests 2000] [--connections 8] [--targets ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import Processes, free_port, relative, wait_http_ok
from targets import BENCH, CODECS, COMPILED, COMPILED_PYTHON, FAST, TARGET_PATH
from throughput import _interrupt, nginx_argv, nodeproxy_config, render, with_codec

from nodeproxy.demo.config import DEMO_SERVICE

# nodeproxy-compiled: the wheel `make compiled` builds (data path compiled by mypyc, h11-mypyc),
# run by build/venv-compiled's python from /, as in throughput.py.
TARGETS = (*(f"{kind}-{c}" for kind in ("bare", "nodeproxy") for c in CODECS), COMPILED)
# (ours, reference, goal on the instruction ratio). Same codec: nodeproxy's own overhead, goal
# 1.15 as for CPU per request. Across codecs: the throughput goal (nodeproxy on the fast codec
# >= 1.25 x a bare pure-h11 relay) would need <= 1/1.25 = 0.80 x its instructions if time
# followed instructions (it does not exactly: kernel time and cycles per instruction differ).
RATIOS: tuple[tuple[str, str, str], ...] = (
    *((f"nodeproxy-{c}", f"bare-{c}", "<= 1.15") for c in CODECS),
    (COMPILED, f"bare-{FAST}", "<= 1.15"),
    (f"nodeproxy-{FAST}", "bare-h11", "<= 0.80"),
    (f"bare-{FAST}", "bare-h11", ""),
    (f"nodeproxy-{FAST}", "nodeproxy-h11", ""),
)
INSTALL_HINT = "sudo apt-get install -y valgrind nginx-light"
START_TIMEOUT = 300.0  # seconds: start-up under valgrind is slow even with counting off
STOP_TIMEOUT = 120.0
REQUEST = f"GET {TARGET_PATH} HTTP/1.1\r\nHost: {DEMO_SERVICE}\r\n\r\n".encode()


@dataclass
class Count:
    """One target's count (a row of the table)."""

    target: str
    requests: int = 0
    instructions: int = 0
    per_request: float = 0.0
    wall_s: float = 0.0  # of the counted requests, under valgrind (tens of times slower)
    command: str = ""
    callgrind_out: str = ""
    error: str | None = None


def _exchange(port: int, requests: int, timeout: float) -> None:
    """``requests`` keep-alive GETs on one connection, one at a time; each answer must be 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        buf = b""
        for _ in range(requests):
            sock.sendall(REQUEST)
            while b"\r\n\r\n" not in buf:
                buf += _receive(sock)
            head, _, buf = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answer {head[:200]!r}")
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            if match is None:
                raise RuntimeError(f"answer without content-length: {head[:200]!r}")
            length = int(match.group(1))
            while len(buf) < length:
                buf += _receive(sock)
            buf = buf[length:]


def _receive(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the proxy closed the connection")
    return data


def load(port: int, requests: int, connections: int, timeout: float = 60.0) -> None:
    """``requests`` in all over ``connections`` keep-alive connections at once."""
    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    pool = ThreadPoolExecutor(connections)
    try:
        for done in [pool.submit(_exchange, port, n, timeout) for n in shares if n]:
            done.result()
    finally:  # on an error or Ctrl-C, do not wait: stopping the proxy ends the other threads
        pool.shutdown(wait=False, cancel_futures=True)


def callgrind_control(*argv: str) -> None:
    subprocess.run(
        ["callgrind_control", *argv], check=True, capture_output=True, timeout=STOP_TIMEOUT
    )


def totals(path: Path) -> int:
    """The first event's total (Ir: instructions) from a callgrind output file.

    ``totals:`` is written at the end; the ``summary:`` in the header stays 0 with counting
    switched on and off by callgrind_control.
    """
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{path} has no totals: line")


def server_argv(args: argparse.Namespace, name: str, up_port: int, port: int) -> list[str]:
    """The target's command line (without valgrind)."""
    if name.startswith("bare-"):
        return [sys.executable, str(BENCH / "bare_relay.py"), str(port), str(up_port)]
    config = nodeproxy_config(args.out / f"{name}.yaml", up_port, port, args.access_log)
    python = str(COMPILED_PYTHON) if name == COMPILED else sys.executable
    return [python, "-m", "nodeproxy", "run", "--config", str(config)]


def count(args: argparse.Namespace, procs: Processes, name: str, up_port: int) -> Count:
    """Start ``name`` under callgrind, count N requests, stop it and read its totals."""
    codec = FAST if name == COMPILED else name.split("-", 1)[1]
    port = free_port()
    out = args.out / f"callgrind.{name}.out"
    out.unlink(missing_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    # A fixed hash seed: str hashes, and so dict probing and set order, cost the same each run.
    argv = with_codec(codec, ["PYTHONHASHSEED=0", *valgrind, f"--callgrind-out-file={out}"])
    if name == COMPILED:  # -m from /: the installed wheel, not a source tree, on sys.path
        argv = ["env", "-C", "/", "-u", "PYTHONPATH", *argv[1:]]
    argv += server_argv(args, name, up_port, port)
    result = Count(target=name, command=shlex.join(argv), callgrind_out=str(out))
    proc = procs.start(name, argv)
    try:
        wait_http_ok(port, proc, TARGET_PATH, DEMO_SERVICE, timeout=START_TIMEOUT)
        load(port, args.warmup, args.connections)
        callgrind_control("-i", "on", str(proc.pid))
        start = time.monotonic()
        load(port, args.requests, args.connections)
        result.wall_s = time.monotonic() - start
        callgrind_control("-i", "off", str(proc.pid))
        proc.send_signal(signal.SIGINT)  # a clean exit: callgrind writes its totals
        proc.wait(timeout=STOP_TIMEOUT)
        result.instructions = totals(out)
        if not result.instructions:
            raise ValueError(f"{out}: no instructions counted")
        result.requests = args.requests
        result.per_request = result.instructions / args.requests
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        result.error = f"{exc}\n{procs.log_tail(name)}"
    finally:
        procs.stop(name)
    return result


def ratios(counts: list[Count]) -> dict[str, float]:
    by = {c.target: c for c in counts if c.error is None}
    return {
        f"instructions_{ours}_over_{ref}": by[ours].per_request / by[ref].per_request
        for ours, ref, _ in RATIOS
        if ours in by and ref in by
    }


def report(args: argparse.Namespace, upstream: list[str], counts: list[Count]) -> str:
    lines = [
        f"callgrind, user-space instructions per request: {args.requests} keep-alive requests"
        f" over {args.connections} connections (after {args.warmup} uncounted), GET"
        f" {TARGET_PATH} to nginx return 200; nodeproxy's access log"
        f" {'on' if args.access_log else 'off'}",
        "",
        "| target | instructions/request | instructions | wall s (under valgrind) |",
        "|---|---:|---:|---:|",
    ]
    for c in counts:
        if c.error:
            lines.append(f"| {c.target} | failed: {c.error.splitlines()[0]} | | |")
        else:
            lines.append(
                f"| {c.target} | {c.per_request / 1000:,.1f}k | {c.instructions:,}"
                f" | {c.wall_s:.1f} |"
            )
    lines.append("")
    found = ratios(counts)
    for ours, ref, goal in RATIOS:
        if (value := found.get(f"instructions_{ours}_over_{ref}")) is None:
            continue
        verdict = ""
        if goal:
            limit = float(goal.split()[1])
            verdict = f"   (goal ≤ {limit:.2f}: {'met' if value <= limit else 'not met'})"
        lines.append(f"- instructions {ours} / {ref}: {value:.3f}{verdict}")
    lines += ["", "Reproduce:", f"    {shlex.join([sys.executable, *sys.argv])}"]
    lines += [f"    {shlex.join(upstream)}"]
    for c in counts:
        lines.append(f"    {c.command}")
    lines += [
        "By hand: start one of the above, send a warm-up, then `callgrind_control -i on PID`,"
        " the requests, `callgrind_control -i off PID`, `kill -INT PID`; where they went:",
        f"    callgrind_annotate {args.out}/callgrind.<target>.out | head -40",
    ]
    lines += [f"\n{c.target} failed:\n{c.error}" for c in counts if c.error]
    return relative("\n".join(lines))


def run_all(args: argparse.Namespace, procs: Processes) -> tuple[list[str], list[Count]]:
    (args.out / "tmp").mkdir(parents=True, exist_ok=True)
    up_port = free_port()
    up_argv = nginx_argv(render("nginx-upstream", args.out, port=up_port), args.out, 0)
    upstream = procs.start("upstream", up_argv)
    wait_http_ok(up_port, upstream, TARGET_PATH, DEMO_SERVICE)
    counts = []
    for name in TARGETS:
        if name in args.targets:
            counts.append(done := count(args, procs, name, up_port))
            progress = "failed" if done.error else f"{done.per_request / 1000:,.1f}k"
            print(f"{name}: {progress} instructions/request", file=sys.stderr)
    return up_argv, counts


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="counted requests per target")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    p.add_argument("--warmup", type=int, default=400, help="uncounted requests first")
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        type=lambda s: s.split(","),
        help=f"comma-separated, counted in this order: {','.join(TARGETS)}",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nodeproxy writes its JSON access line per request (to <out>/nodeproxy-*.log)",
    )
    p.add_argument("--out", type=Path, default=BENCH / "out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Count every target; prints the table and writes <out>/instructions.json."""
    args = _parse_args(argv)
    if unknown := set(args.targets) - set(TARGETS):
        print(f"unknown targets {sorted(unknown)}; choose from {TARGETS}", file=sys.stderr)
        return 2
    if args.requests < 1 or args.connections < 1 or args.warmup < 0:
        print("--requests and --connections must be positive", file=sys.stderr)
        return 2
    tools = ("valgrind", "callgrind_control", "nginx", "taskset")
    if missing := [tool for tool in tools if shutil.which(tool) is None]:
        print(f"missing: {', '.join(missing)}; install with:\n    {INSTALL_HINT}", file=sys.stderr)
        return 2
    if any(t.endswith(FAST) for t in args.targets) and not importlib.util.find_spec("h11_mypyc"):
        print(
            f"{FAST} is not installed: .venv/bin/pip install -e '.[fast]'"
            " (or leave its targets out with --targets)",
            file=sys.stderr,
        )
        return 2
    if COMPILED in args.targets and not COMPILED_PYTHON.is_file():
        print(f"{COMPILED}: no {relative(str(COMPILED_PYTHON))}; build it with: make compiled"
              " (or leave it out with --targets)", file=sys.stderr)  # fmt: skip
        return 2
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    procs = Processes(args.out)
    interrupted = ""
    try:
        upstream, counts = run_all(args, procs)
    except KeyboardInterrupt as exc:
        interrupted = str(exc) or "SIGINT"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        procs.stop_all()
    if interrupted:
        print(f"interrupted by {interrupted}; stopped every process started", file=sys.stderr)
        return 130
    print(report(args, upstream, counts))
    doc = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(c) for c in counts],
        "ratios": ratios(counts),
        "loadavg_1m_after": os.getloadavg()[0],
    }
    (args.out / "instructions.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(c.error for c in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
