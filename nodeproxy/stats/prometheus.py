"""Render metrics in the Prometheus text exposition format, version 0.0.4.

Why a renderer of our own: the format is small and stable, and our registry
(``stats.Stats``) already holds exactly what a scrape needs, so a client
library would only add a second registry to keep in sync. Everything here is
pure: ``Stats`` (plus the few process/runtime gauges computed at scrape time)
goes in as ``Family`` objects, text comes out.

Format reminders (https://prometheus.io/docs/instrumenting/exposition_formats/):
one ``# HELP`` and ``# TYPE`` line per family, then ``name{label="value"} v``
samples; label values escape ``\\``, ``"`` and newlines; histograms expose
cumulative ``_bucket{le=...}`` series ending at ``le="+Inf"`` (== ``_count``),
plus ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from nodeproxy.stats.names import HELP
from nodeproxy.stats.registry import Histogram, Labels, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric name with its type, help text and current series."""

    name: str
    kind: Kind
    help: str
    samples: tuple[tuple[Labels, float], ...] = ()
    histograms: tuple[tuple[Labels, Histogram], ...] = ()


def help_for(name: str) -> str:
    return HELP.get(name, f"nodeproxy metric {name}.")


def stats_families(stats: Stats) -> list[Family]:
    """Every series in the registry as families, sorted by name and labels."""
    out: list[Family] = []
    stats.collect()
    for name, series in stats.counters.items():
        out.append(Family(name, "counter", help_for(name), tuple(sorted(series.items()))))
    for name, series in stats.gauges.items():
        out.append(Family(name, "gauge", help_for(name), tuple(sorted(series.items()))))
    for name, hists in stats.histograms.items():
        out.append(
            Family(name, "histogram", help_for(name), histograms=tuple(sorted(hists.items())))
        )
    out.sort(key=lambda f: f.name)
    return out


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integral values without a fraction, non-finite ones as Prometheus spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def format_bound(bound: float) -> str:
    """A bucket's ``le`` value: ``0.005``, ``1.0``, ``+Inf`` (as client_python writes them)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def format_labels(lbls: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*lbls, extra] if extra is not None else list(lbls)
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def render(families: Iterable[Family]) -> str:
    """The whole exposition, newline-terminated."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for lbls, value in fam.samples:
            lines.append(f"{fam.name}{format_labels(lbls)} {format_value(value)}")
        for lbls, hist in fam.histograms:
            for bound, cumulative in hist.cumulative():
                le = ("le", format_bound(bound))
                lines.append(f"{fam.name}_bucket{format_labels(lbls, le)} {cumulative}")
            lines.append(f"{fam.name}_sum{format_labels(lbls)} {format_value(hist.total)}")
            lines.append(f"{fam.name}_count{format_labels(lbls)} {hist.count}")
    return "\n".join(lines) + "\n" if lines else ""


def families_json(families: Iterable[Family]) -> dict[str, dict[str, list[dict[str, object]]]]:
    """The same families as plain JSON data, for ``/stats``.

    Histograms carry count, sum, interpolated p50/p90/p99 and cumulative
    buckets keyed by their ``le`` string (JSON has no infinity).
    """
    out: dict[str, dict[str, list[dict[str, object]]]] = {
        "counters": {},
        "gauges": {},
        "histograms": {},
    }
    for fam in families:
        if fam.kind == "histogram":
            out["histograms"][fam.name] = [
                {
                    "labels": dict(lbls),
                    "count": hist.count,
                    "sum": hist.total,
                    "p50": round(hist.estimate(0.5), 9),
                    "p90": round(hist.estimate(0.9), 9),
                    "p99": round(hist.estimate(0.99), 9),
                    "buckets": {format_bound(b): c for b, c in hist.cumulative()},
                }
                for lbls, hist in fam.histograms
            ]
        else:
            section = out["counters" if fam.kind == "counter" else "gauges"]
            section[fam.name] = [{"labels": dict(lbls), "value": v} for lbls, v in fam.samples]
    return out
