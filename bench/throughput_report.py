"""bench/throughput.py's report: the table, the ratios against their goals, the commands.

Why apart: throughput.py reads as the experiment (what runs where, what is measured); this
is how a run is read: which ratios carry a goal, and what a paced or multi-round run means.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from harness import Result, relative
from targets import CODECS, COMPILED, COMPILED_H11, FAST, TARGET_PATH

# (measure, ours, reference, goal): the goals are "nodeproxy as users install it (the image:
# compiled codec and data path) against nginx and a bare pure-h11 relay" and "nodeproxy's own
# CPU per request over the bare relay's on the same codec"; the rows without a goal say where
# the rest comes from.
RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("throughput", COMPILED, "nginx", ">= 0.08"),
    ("throughput", COMPILED, "bare-h11", ">= 1.25"),
    ("throughput", f"nodeproxy-{FAST}", "nginx", ""),
    ("throughput", f"nodeproxy-{FAST}", "bare-h11", ""),
    *(("cpu_per_request", f"nodeproxy-{c}", f"bare-{c}", "<= 1.15") for c in CODECS),
    ("cpu_per_request", COMPILED, f"bare-{FAST}", "<= 1.15"),
    ("cpu_per_request", COMPILED_H11, "bare-h11", "<= 1.15"),
    ("throughput", COMPILED, f"nodeproxy-{FAST}", ""),
    *(("throughput", f"nodeproxy-{c}", f"bare-{c}", "") for c in CODECS),
    ("throughput", f"bare-{FAST}", "bare-h11", ""),
    ("throughput", f"nodeproxy-{FAST}", "nodeproxy-h11", ""),
)
BUSY_MIN = 0.9  # a proxy using less of its core than this was not what limited req/s


def ratio_key(measure: str, ours: str, ref: str) -> str:
    return f"{measure}_{ours}_over_{ref}"


def ratios(results: list[Result]) -> dict[str, float]:
    """The RATIOS this run has both sides of: nodeproxy against nginx (the reference) and the
    bare relay (the Python floor)."""
    by = {r.target: r for r in results if r.error is None}
    found: dict[str, float] = {}
    for measure, ours_name, ref_name, _ in RATIOS:
        ours, ref = by.get(ours_name), by.get(ref_name)
        if ours is None or ref is None:
            continue
        if measure == "throughput" and ref.rps:
            found[ratio_key(measure, ours_name, ref_name)] = ours.rps / ref.rps
        elif measure == "cpu_per_request" and ours.cpu_us_per_req and ref.cpu_us_per_req:
            cpu = ours.cpu_us_per_req / ref.cpu_us_per_req
            found[ratio_key(measure, ours_name, ref_name)] = cpu
    return found


def ratio_lines(found: dict[str, float], paced: bool = False) -> list[str]:
    """One line per ratio, with its goal and whether this run met it."""
    lines = []
    for measure, ours, ref, goal in RATIOS:
        value = found.get(ratio_key(measure, ours, ref))
        if value is None or (paced and measure == "throughput"):
            continue  # paced, every target is offered the same rate: only CPU compares
        verdict = ""
        if goal:
            op, limit = goal.split()
            met = value >= float(limit) if op == ">=" else value <= float(limit)
            verdict = f"   (goal {op.replace('>=', '≥').replace('<=', '≤')} {limit}: "
            verdict += "met)" if met else "not met)"
        label = measure.replace("_", " ")
        lines.append(f"- {label} {ours} / {ref}: {value:.3f}{verdict}")
    return lines


def report(args: argparse.Namespace, upstream: list[str], results: list[Result]) -> str:
    """The markdown table, the ratios and the commands to reproduce."""
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s (after a {args.warmup:g}s"
        f" warm-up), GET {TARGET_PATH}, load on core {args.load_cpu}, proxy on core"
        f" {args.proxy_cpu}, upstream (nginx return 200) on core {args.upstream_cpu};"
        f" nodeproxy's access log {'on' if args.access_log else 'off'}"
        + (f"; medians of {args.rounds} rounds, the targets in turn" if args.rounds > 1 else ""),
        *([_paced_line(args)] if args.pace > 0 else []),
        "",
        "| target | req/s | CPU µs/req | core busy | CPU of | p50 ms | p99 ms | non-2xx"
        " | socket errors |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    busy: dict[str, float] = {}
    for r in results:
        if r.error:
            lines.append(f"| {r.target} | failed: {r.error.splitlines()[0]} | | | | | | | |")
            continue
        cpu = share = "n/a"
        if r.cpu_us_per_req is not None:
            busy[r.target] = r.cpu_us_per_req * r.rps / 1e6
            cpu, share = f"{r.cpu_us_per_req:.1f}", f"{busy[r.target]:.0%}"
        lines.append(
            f"| {r.target} | {r.rps:,.0f} | {cpu} | {share} | {r.cpu_of} | {r.p50_ms:.3f}"
            f" | {r.p99_ms:.3f} | {r.non_2xx} | {r.socket_errors} |"
        )
    lines.append("")
    lines += [f"- {r.note}" for r in results if r.note]
    lines += [
        f"- WARNING {name}: its process used {share:.0%} of its core, so its req/s was capped"
        " by something else (other processes on its core, or core "
        f"{args.load_cpu} not keeping up); its CPU µs/req still holds"
        for name, share in busy.items()
        if name != "direct" and share < BUSY_MIN and args.pace <= 0
    ]
    lines += [
        f"- WARNING {r.target}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors;"
        " its numbers do not measure proxying"
        for r in results
        if r.non_2xx or r.socket_errors
    ]
    lines += ratio_lines(ratios(results), paced=args.pace > 0)
    lines += ["", f"Reproduce (configs in {args.out}):"]
    lines += [f"    {shlex.join([sys.executable, *sys.argv])}", f"    {shlex.join(upstream)}"]
    for r in results:
        lines += [f"    {cmd}" for cmd in (r.server_command, r.wrk_command) if cmd]
    lines += [f"\n{r.target} failed:\n{r.error}" for r in results if r.error]
    return relative("\n".join(lines))


def _paced_line(args: argparse.Namespace) -> str:
    offered = args.connections * 1000 / args.pace
    return (
        f"Paced: each connection waits {args.pace} ms between requests (bench/paced.lua), so"
        f" every target is offered the same load, at most {offered:,.0f} req/s, and idles"
        " between requests, as a proxy on a real node does. CPU µs/req compares targets at an"
        " equal rate (÷ 1000: vCPU per 1000 req/s); req/s is the offered load, not a capacity."
    )
