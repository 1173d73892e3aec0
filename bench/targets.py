"""What bench/throughput.py and the other scripts measure: the request, the targets, the
codecs (why apart: the runner, its report and the other scripts share them).
"""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent
TARGET_PATH = "/hello/bench"
CODECS = ("h11", "h11-mypyc")  # the reference, then the compiled build (nodeproxy[fast])
FAST = "h11-mypyc"
# nodeproxy-compiled: h11-mypyc and the data path compiled by mypyc, as users install it
# (pip install 'nodeproxy[fast]') and the image ships: the wheel `make compiled` builds
# (setup.py), installed in a venv of its own, run by that venv's python from / (so that no
# source tree on the path shadows the install).
COMPILED = "nodeproxy-compiled"
# The same wheel on the reference h11: what `pip install nodeproxy` (no `fast` extra) gives
# where a C compiler is there (NODEPROXY_COMPILE=auto compiles the data path anyway).
COMPILED_H11 = "nodeproxy-compiled-h11"
COMPILED_PYTHON = BENCH.parent / "build" / "venv-compiled" / "bin" / "python"
COMPILED_CODECS = {COMPILED: FAST, COMPILED_H11: "h11"}  # the wheel's targets, and their codec
TARGETS = (
    "direct",
    "nginx",
    *(f"{kind}-{c}" for kind in ("bare", "nodeproxy") for c in CODECS),
    COMPILED,
    COMPILED_H11,
)
