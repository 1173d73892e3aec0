"""The probe listener's answers: ``/ready`` and ``/healthz``, nothing else.

Why a listener of its own: the admin port serves ``POST /drain`` and
``/config_dump``, so it belongs on 127.0.0.1, where only the node's operator
reaches it. The kubelet's probes must reach *something*, and a pod's kubelet
probes the pod IP. ``admin.probe_address`` is that something: a second
listener, run by the same bounded server shell, that answers the two probe
paths exactly as the admin port does and 404s everything else. Nothing it
says is secret or changes state, so it has no Host check (a DNS-rebinding page
could learn that the proxy is ready, and nothing more). Pure, like
``handlers.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from nodeproxy.admin.handlers import AdminContext, AdminResponse, handle, refuse

PROBE_PATHS = frozenset({"/ready", "/healthz"})
NOT_A_PROBE = "admin_not_a_probe_path"


def probe_answer(
    ctx: AdminContext, method: str, target: str, headers: Mapping[str, str], now: float
) -> AdminResponse:
    """The admin's answer for a probe path; 404 for any other path."""
    path = urlsplit(target).path or "/"
    if len(path) > 1:
        path = path.rstrip("/")
    if path not in PROBE_PATHS:
        return refuse(
            404,
            f"the probe port answers only {', '.join(sorted(PROBE_PATHS))}; "
            "the admin API is on admin.address\n",
            NOT_A_PROBE,
        )
    return handle(ctx, method, target, headers, now)
