"""The interception box: a pod with no proxy settings is in the mesh.

The scenario is ``tests/helpers/intercept_box.py`` (2 nodes, pods in their own
network namespaces, nftables redirect rules installed by ``nodeproxy
intercept install``); this test starts it inside ``unshare --mount --net
--pid --fork`` and reads its JSON verdict. Needs root plus ``unshare``, ``ip``,
``curl``, ``nft`` and ``tcpdump`` (.ci/run installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.unshared import unshared_verdict

TOOLS = ("unshare", "ip", "curl", "nft", "tcpdump")

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root: network namespaces, veth, bridges and nftables (root in CI)",
    ),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} on PATH (apt-get install -y nftables tcpdump curl)",
    ),
]

EXPECTED = [
    "install_idempotent_node-1",
    "install_idempotent_node-2",
    "http_to_cluster_ip",
    "http_to_remote_pod_ip",
    "http_routed_by_destination_not_host",
    "http_denied_by_policy",
    "tcp_echo_local",
    "tcp_echo_remote",
    "tcp_pod_ip_remote",
    "tls_remote",
    "server_first_remote",
    "tcp_denied_local",
    "tcp_denied_remote",
    "tls_denied",
    "bridge_sees_only_tls",
    "detection_counted",
    "sni_logged",
    "node1_intercepts_in_two_workers",
    "uninstall_leaves_nothing_node-1",
    "uninstall_leaves_nothing_node-2",
]


async def test_pod_without_proxy_settings_is_intercepted_carried_over_mtls_and_policed() -> None:
    verdict = await unshared_verdict("tests.helpers.intercept_box", 70)
    assert verdict["error"] is None, json.dumps(verdict, indent=1)[:20000]
    assert verdict["checks"] == dict.fromkeys(EXPECTED, True), json.dumps(verdict, indent=1)[:20000]
    assert verdict["ok"] is True
