"""Process, /proc and wrk-output plumbing for bench/throughput.py.

Why apart: the throughput script should read as the experiment (what runs where, what is
measured); this module is the machinery under it. Each child runs in its own process group so it
and its workers (nginx forks one) can be stopped, and measured, as one unit.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import procstats


@dataclass
class Result:
    """One measured target (a row of the table)."""

    target: str
    rps: float = 0.0
    cpu_us_per_req: float | None = None
    cpu_of: str = ""
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    error: str | None = None
    wrk_command: str = ""
    server_command: str = ""
    note: str = ""  # a line the report prints under the table (e.g. nodeproxy's access lines)


def median_results(rounds: list[list[Result]]) -> list[Result]:
    """One result per target from several rounds (``--rounds``): the median of each measure.

    On a shared VM one measurement of CPU per request can be off by a tenth; measuring the
    targets in turn, N times over, and taking medians keeps one noisy slot from deciding a
    ratio. A target that failed in any round is reported as that failure.
    """
    if len(rounds) == 1:
        return rounds[0]
    combined: list[Result] = []
    for first, *others in zip(*rounds, strict=True):
        runs = [first, *others]
        failed = next((r for r in runs if r.error), None)
        if failed is not None:
            combined.append(failed)
            continue
        cpus = [r.cpu_us_per_req for r in runs if r.cpu_us_per_req is not None]
        med = Result(
            target=first.target,
            rps=statistics.median(r.rps for r in runs),
            cpu_us_per_req=statistics.median(cpus) if cpus else None,
            cpu_of=first.cpu_of,
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs),
            requests=sum(r.requests for r in runs),
            non_2xx=sum(r.non_2xx for r in runs),
            socket_errors=sum(r.socket_errors for r in runs),
            wrk_command=first.wrk_command,
            server_command=first.server_command,
            note=first.note,
        )
        if cpus:
            by_round = ", ".join(f"{c:.1f}" for c in cpus)
            spread = f"{first.target}: CPU µs/req by round {by_round}"
            med.note = f"{med.note}; {spread}" if med.note else spread
        combined.append(med)
    return combined


class Processes:
    """Owns every child process: each in its own process group, all stopped by `stop_all`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.out / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.out / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


ROOT = Path(__file__).resolve().parent.parent


def relative(text: str) -> str:
    """``text`` with paths under the repository made relative to it.

    Reports print commands to reproduce a run; they must not name this
    machine's checkout (``/home/me/nodeproxy/bench/out`` -> ``bench/out``).
    """
    return text.replace(str(ROOT) + "/", "")


def cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in the process group, in seconds."""
    return procstats.cpu_seconds({pgid})


def pinned(cpu: int, *argv: str) -> list[str]:
    """argv run on one core (children, such as nginx's worker, inherit the affinity)."""
    return ["taskset", "-c", str(cpu), *argv]


PACED_SCRIPT = Path(__file__).resolve().parent / "paced.lua"


def run_wrk(
    cpu: int,
    threads: int,
    connections: int,
    url: str,
    host: str,
    seconds: float,
    pace_ms: int = 0,
) -> tuple[list[str], str]:
    """Run wrk pinned to ``cpu`` with --latency; (its argv, its output). Never left running.

    ``pace_ms`` > 0: each connection waits that long between requests (bench/paced.lua).
    """
    argv = pinned(cpu, "wrk", f"-t{threads}", f"-c{connections}")
    argv += [f"-d{seconds:g}s", "--latency", "-H", f"Host: {host}"]
    argv += [url] if pace_ms <= 0 else ["-s", str(PACED_SCRIPT), url, "--", str(pace_ms)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as wrk:
        try:
            out, err = wrk.communicate(timeout=seconds + 30)
        finally:
            if wrk.poll() is None:  # interrupted or timed out: no stray load generator
                wrk.kill()
                wrk.wait()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited with status {wrk.returncode}: {err.strip()}")
    return argv, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http_ok(
    port: int,
    proc: subprocess.Popen[bytes],
    path: str,
    host: str,
    timeout: float = 15.0,
    *,
    address: str = "127.0.0.1",
    source: str | None = None,
) -> None:
    """Poll `GET path` with `Host: host` until it answers 200, the process dies or time is up.

    `address` is where to connect, `source` the local address to connect from (a "pod").
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    src = None if source is None else (source, 0)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        conn = http.client.HTTPConnection(address, port, timeout=2.0, source_address=src)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"status {resp.status} {resp.getheader('x-nodeproxy-error', '')}"
        except OSError as exc:
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"{address}:{port}{path} not answering 200 after {timeout}s ({last})")


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str, result: Result) -> None:
    """Fill req/s, percentiles, request and error counts from wrk --latency output."""

    def grab(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no {pattern!r}:\n{text}")
        return match

    result.rps = float(grab(r"^Requests/sec:\s+([\d.]+)").group(1))
    result.requests = int(grab(r"^\s*(\d+) requests in").group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        value, unit = grab(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$").groups()
        setattr(result, attr, float(value) * _UNIT_MS[unit])
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result.non_2xx = int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        result.socket_errors = sum(int(g) for g in m.groups())
