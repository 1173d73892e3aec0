"""The iptables (iptables-nft) fallback of ``nodeproxy intercept``, applied for real.

Inside ``unshare --net`` (a fresh network namespace: never the machine's
own rules): install twice, read ``iptables-save``, uninstall, read it again.
The nftables backend is applied the same way by tests/test_intercept_box.py.
Needs root, ``unshare`` and ``iptables`` (.ci/run installs it); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("unshare", "iptables", "iptables-save", "iptables-restore")

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root: a network namespace of its own",
    ),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} on PATH (apt-get install -y iptables)",
    ),
]

ARGS = "--backend iptables --pod-cidr 10.78.1.0/24 --destination 10.96.0.0/16 --port 15001"


async def test_iptables_install_is_idempotent_and_uninstall_removes_every_rule() -> None:
    np = f"{sys.executable} -m nodeproxy intercept"
    script = (
        f"{np} install {ARGS} && {np} install {ARGS} && echo '#installed' && iptables-save -t nat"
        f" && {np} uninstall --backend iptables && {np} uninstall --backend iptables"
        " && echo '#removed' && iptables-save -t nat"
    )
    with trio.fail_after(30):
        result = await trio.run_process(
            ["unshare", "--net", "--fork", "sh", "-ec", script],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    out, err = result.stdout.decode(), result.stderr.decode()
    if result.returncode != 0 and "unshare" in err and "Operation not permitted" in err:
        pytest.skip(f"namespaces are not permitted here: {err[-300:]}")
    assert result.returncode == 0, out + err
    installed, _, removed = out.partition("#installed")[2].partition("#removed")
    rules = [ln for ln in installed.splitlines() if ln.startswith("-A")]
    assert rules == [
        "-A PREROUTING -j NODEPROXY-INTERCEPT",  # one jump after two installs
        "-A NODEPROXY-INTERCEPT -m mark --mark 0x4e50 -j RETURN",
        "-A NODEPROXY-INTERCEPT -s 10.78.1.0/24 -d 10.96.0.0/16 -p tcp -j REDIRECT"
        " --to-ports 15001",
    ]
    assert "NODEPROXY" not in removed  # the jump and the chain are gone
    assert [ln for ln in removed.splitlines() if ln.startswith("-A")] == []
