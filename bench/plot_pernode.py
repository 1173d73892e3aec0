"""PNG plots of bench/pernode_vs_perpod.py's results: how each cost grows with pods per node.

Why a separate script: matplotlib is not a nodeproxy dependency; this runs with the bench's own
venv (bench/out/venv, created by the bench script) as
`bench/out/venv/bin/python bench/plot_pernode.py results.json docs/img` and prints one
`wrote PATH` line per file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MODES = ["per-node", "per-pod", "nodeproxy-plain", "nginx", "haproxy", "proxy.py"]


def series(rows: list[dict[str, Any]], value: Any) -> dict[str, tuple[list[int], list[float]]]:
    """{mode: (pods per node, values)} for the measured (not skipped) rows."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in sorted(rows, key=lambda r: int(r["pods_per_node"])):
        if r["skipped"] or r["mode"] not in MODES or not r["load"].get("ok"):
            continue
        label = r["mode"] if r["placement"] == "spread" else f"{r['mode']} (all cross-node)"
        xs, ys = out.setdefault(label, ([], []))
        xs.append(int(r["pods_per_node"]))
        ys.append(float(value(r)))
    return out


def main() -> None:
    # matplotlib lives only in the bench venv, so it is imported here, lazily.
    import matplotlib  # type: ignore[import-not-found]  # not in nodeproxy's venv, by design

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]  # same

    data = json.loads(Path(sys.argv[1]).read_text())
    img = Path(sys.argv[2])
    img.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = data["rows"]
    duration = float(data["settings"]["duration"])
    base = {
        (r["placement"], r["pods_per_node"]): r["load"]
        for r in rows
        if r["mode"] == "none" and not r["skipped"]
    }

    def added(key: str) -> Any:
        return lambda r: r["load"][key] - base.get((r["placement"], r["pods_per_node"]), {}).get(
            key, 0.0
        )

    charts = [
        (
            "pernode_vs_perpod_cpu",
            "proxy vCPU per 1000 req/s",
            lambda r: r["cpu_s"] / duration / r["load"]["rps"] * 1000,
        ),
        ("pernode_vs_perpod_memory", "proxy memory, MB (RSS, all proxies)", lambda r: r["rss_mb"]),
        ("pernode_vs_perpod_p99", "added p99 latency over no mesh, ms", added("p99_ms")),
        (
            "pernode_vs_perpod_tls",
            "TLS connections between proxies",
            lambda r: r["tls_connections"],
        ),
    ]
    for name, label, value in charts:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for mode, (xs, ys) in series(rows, value).items():
            if name.endswith("tls") and not mode.startswith(("per-node", "per-pod")):
                continue
            style = "--" if "cross" in mode else "-"
            width = 2.5 if mode.startswith("per-") else 1.2
            ax.plot(xs, ys, style, marker="o", label=mode, linewidth=width)
        if name.endswith("p99"):  # an overloaded run is seconds, a hop is milliseconds
            ax.set_yscale("symlog", linthresh=10.0)
        ax.set_xlabel("pods per node (2 nodes)")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = img / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
