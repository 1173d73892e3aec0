"""The cluster-in-a-box: 3 nodes from network namespaces, the fake API, a nodeproxy each.

The scenario is ``tests/helpers/cluster_in_a_box.py``; this test only starts it
inside ``unshare --mount --net --pid --fork`` (no route off the machine; every
process, namespace and mount dies with it) and reads its JSON verdict. It
needs root plus ``unshare``, ``ip`` and ``curl``, and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.unshared import unshared_verdict

TOOLS = ("unshare", "ip", "curl")

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root: network namespaces, veth and a bridge (runs as root in CI)",
    ),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} on PATH",
    ),
]


async def test_three_nodes_mtls_replica_deletion_and_api_outage() -> None:
    verdict = await unshared_verdict("tests.helpers.cluster_in_a_box", 60)
    assert verdict["error"] is None, verdict
    assert verdict["checks"] == {
        "all_200_before": True,
        "both_replicas_answer": True,
        "no_failed_request_while_deleting": True,
        "traffic_moved": True,
        "traffic_flows_without_api": True,
        "still_ready_without_api": True,
        "node_to_node_mtls": True,
    }, json.dumps(verdict, indent=1)[:20000]
    assert verdict["ok"] is True
    assert verdict["returncode"] == 0
