"""Run a scenario module inside ``unshare --mount --net --pid --fork`` and read its verdict.

Why apart: both box tests (cluster-in-a-box, interception) start their scenario the
same way: no route off the machine, everything it starts dies with it, and the last
line of its stdout is the JSON verdict ``run_box`` prints. Skips when namespaces are
not permitted here; fails with the scenario's stderr when it printed no verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent.parent


async def unshared_verdict(module: str, deadline: float) -> dict[str, Any]:
    command = ["unshare", "--mount", "--net", "--pid", "--fork", sys.executable, "-m", module]
    with trio.fail_after(deadline):
        result = await trio.run_process(
            command, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    refused = b"unshare failed" in result.stderr or b"Operation not permitted" in result.stderr
    if result.returncode != 0 and not result.stdout.strip() and refused:
        pytest.skip(f"namespaces are not permitted here: {result.stderr.decode()[-300:]}")
    try:
        verdict: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"no verdict (exit {result.returncode}): {result.stderr.decode()[-3000:]}")
    verdict["returncode"] = result.returncode
    return verdict
