"""Who is asking and what they may have signed: pure decisions over API answers.

The rule is istiod's for ztunnel. A caller proves *which node* it runs on
with a service-account token bound to its pod (the API server vouches for it
in a TokenReview), and may then have signed exactly:

- the node's own identity, ``spiffe://<td>/node/<node>``;
- ``spiffe://<td>/ns/<ns>/sa/<sa>`` for each service account that has a pod
  on that node right now (pods that finished, Succeeded or Failed, do not count).

Only the node proxies' own service account(s) may ask at all: any pod can
get a token with our audience for its *own* account, and must not be able to
collect its neighbours' identities with it.

The node comes from the token (``authentication.kubernetes.io/node-name``,
set by API servers since Kubernetes 1.30) or else from the bound pod's
``spec.nodeName`` (whose UID must still be the token's). Nothing here does
I/O: ``kubeapi`` fetches, ``service`` calls these in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeproxy.signer.protocol import Refusal, SignerRefused
from nodeproxy.tls.identity import SpiffeId

NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Caller:
    """The authenticated identity behind a token, as the API server reported it."""

    namespace: str
    service_account: str
    pod_name: str | None
    pod_uid: str | None
    node_name: str | None  # only when the token carries it

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.service_account}"


def review_body(token: str, audience: str) -> dict[str, Any]:
    """The TokenReview to POST to ``/apis/authentication.k8s.io/v1/tokenreviews``."""
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }


def _unauthenticated(reason: str) -> SignerRefused:
    return SignerRefused(401, "unauthenticated", reason)


def _forbidden(reason: str) -> SignerRefused:
    return SignerRefused(403, "forbidden", reason)


def caller_from_review(
    review: Mapping[str, Any], audience: str, allowed: frozenset[tuple[str, str]]
) -> Caller:
    """The caller a TokenReview answer describes; 401/403 ``SignerRefused`` otherwise.

    ``allowed``: the (namespace, service account) pairs of node proxies.
    """
    status = review.get("status")
    if not isinstance(status, dict) or status.get("authenticated") is not True:
        error = status.get("error") if isinstance(status, dict) else None
        raise _unauthenticated(f"token rejected by the API server: {error or 'not authenticated'}")
    audiences = status.get("audiences")
    if not isinstance(audiences, list) or audience not in audiences:
        raise _unauthenticated(f"token is not for audience {audience!r} (has {audiences})")
    user = status.get("user")
    user = user if isinstance(user, dict) else {}
    username = str(user.get("username", ""))
    ns, _, sa = username.removeprefix(SA_PREFIX).partition(":")
    if not username.startswith(SA_PREFIX) or not ns or not sa:
        raise _forbidden(f"{username or 'the caller'} is not a service account")
    if (ns, sa) not in allowed:
        names = ", ".join(f"{n}/{s}" for n, s in sorted(allowed))
        raise _forbidden(f"service account {ns}/{sa} may not request certificates (only {names})")
    extra = user.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    return Caller(ns, sa, _first(extra, POD_NAME), _first(extra, POD_UID), _first(extra, NODE_NAME))


def _first(extra: Mapping[str, Any], key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def node_of_pod(caller: Caller, pod: Mapping[str, Any] | None) -> str:
    """The node of the caller's bound pod (``GET`` answer, None for 404); 403 otherwise."""
    if pod is None:
        raise _forbidden(f"the token's pod {caller.namespace}/{caller.pod_name} does not exist")
    meta = pod.get("metadata") or {}
    if caller.pod_uid is not None and meta.get("uid") != caller.pod_uid:
        raise _forbidden(
            f"pod {caller.namespace}/{caller.pod_name} was replaced (uid differs from the token's)"
        )
    node = (pod.get("spec") or {}).get("nodeName")
    if not isinstance(node, str) or not node:
        raise _forbidden(f"pod {caller.namespace}/{caller.pod_name} is not scheduled on a node")
    return node


def account_of(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, service account) of a pod that counts as running, else None."""
    if (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
        return None
    ns = (pod.get("metadata") or {}).get("namespace")
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    return (ns, sa) if isinstance(ns, str) and isinstance(sa, str) else None


def decide(
    requested: Sequence[SpiffeId],
    node: str,
    accounts: Iterable[tuple[str, str]],
) -> tuple[list[SpiffeId], list[Refusal]]:
    """Split ``requested`` into what ``node`` may have signed and refusals with reasons."""
    here = frozenset(accounts)
    allowed: list[SpiffeId] = []
    refused: list[Refusal] = []
    for sid in requested:
        if sid.kind == "node":
            if sid.node_name == node:
                allowed.append(sid)
            else:
                refused.append(
                    Refusal(str(sid), f"the caller runs on node {node!r}, not {sid.node_name!r}")
                )
        elif (sid.namespace, sid.service_account) in here:
            allowed.append(sid)
        else:
            reason = (
                f"no pod with service account {sid.namespace}/{sid.service_account} "
                f"runs on node {node!r}"
            )
            refused.append(Refusal(str(sid), reason))
    return allowed, refused
