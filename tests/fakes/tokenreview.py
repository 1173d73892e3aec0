"""TokenReview for the fake API server: bound service-account tokens, checked like the real one.

The real API server signs a JWT for each projected token; here a token is an
opaque random string the test gets from ``issue(...)``, bound (as the
kubelet binds projected tokens) to one pod of the ``ClusterState``. A review
(``POST /apis/authentication.k8s.io/v1/tokenreviews``) answers 201 with the
TokenReview echoed back and a ``status`` in the real shape:

- good: ``authenticated: true``, ``user`` (username
  ``system:serviceaccount:<ns>:<sa>``, uid, groups, ``extra`` with
  ``authentication.kubernetes.io/pod-name``/``pod-uid``/``credential-id`` and,
  as API servers since 1.30 add, ``node-name``/``node-uid``), ``audiences``
  (the requested ones the token carries);
- bad: no ``authenticated``, ``user: {}`` and ``error`` with the API server's
  wording (unknown token, expired, audience mismatch, pod gone or replaced).

Expiry is on the trio clock, so ``autojump_clock`` tests can let a token age.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import trio

from tests.fakes.cluster_state import ClusterState, Obj

PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class BoundToken:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str
    audiences: tuple[str, ...]
    expires_at: float  # trio clock
    with_node: bool  # the API server adds node-name/node-uid (Kubernetes >= 1.30)


class TokenReviews:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.tokens: dict[str, BoundToken] = {}
        self.reviews = 0

    def issue(
        self,
        pod_name: str,
        namespace: str = "default",
        *,
        audiences: tuple[str, ...] = ("nodeproxy-signer",),
        lifetime: float = 3600.0,
        with_node: bool = True,
    ) -> str:
        """A projected token for the pod ``namespace/pod_name`` (which must exist)."""
        pod = self.state.objects["pods"][f"{namespace}/{pod_name}"]
        token = secrets.token_urlsafe(32)
        self.tokens[token] = BoundToken(
            namespace,
            pod["spec"].get("serviceAccountName") or "default",
            pod_name,
            pod["metadata"]["uid"],
            pod["spec"]["nodeName"],
            audiences,
            trio.current_time() + lifetime,
            with_node,
        )
        return token

    def review(self, body: bytes) -> tuple[int, Obj]:
        """(HTTP status, response document) for a POSTed TokenReview."""
        self.reviews += 1
        try:
            doc = json.loads(body)
        except ValueError:
            return 400, _status(400, "BadRequest", "the body of the request was not valid JSON")
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != "TokenReview"
            or doc.get("apiVersion") != "authentication.k8s.io/v1"
        ):
            msg = (
                "the object provided is unrecognized (must be authentication.k8s.io/v1 TokenReview)"
            )
            return 400, _status(400, "BadRequest", msg)
        spec = doc.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            msg = 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value'
            return 422, _status(422, "Invalid", msg)
        wanted = list(spec.get("audiences") or [API_AUDIENCE])
        out = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": self._status(token, wanted),
        }
        return 201, out

    def _status(self, token: str, wanted: list[str]) -> dict[str, Any]:
        bound = self.tokens.get(token)
        if bound is None:
            return _failed("invalid bearer token")
        if trio.current_time() >= bound.expires_at:
            return _failed("invalid bearer token, service account token has expired")
        common = [a for a in wanted if a in bound.audiences]
        if not common:
            return _failed(
                f"invalid bearer token, token audiences {json.dumps(list(bound.audiences))} "
                f"is invalid for the target audiences {json.dumps(wanted)}"
            )
        pod = self.state.objects["pods"].get(f"{bound.namespace}/{bound.pod_name}")
        if pod is None:
            return _failed(f'invalid bearer token, pods "{bound.pod_name}" not found')
        if pod["metadata"]["uid"] != bound.pod_uid:
            return _failed(
                "invalid bearer token, the UID in the bound object reference "
                f"({bound.pod_uid}) does not match the pod ({pod['metadata']['uid']})"
            )
        extra = {
            "authentication.kubernetes.io/credential-id": [f"JTI={token[:8]}"],
            "authentication.kubernetes.io/pod-name": [bound.pod_name],
            "authentication.kubernetes.io/pod-uid": [bound.pod_uid],
        }
        if bound.with_node:
            extra["authentication.kubernetes.io/node-name"] = [bound.node_name]
            extra["authentication.kubernetes.io/node-uid"] = [f"uid-node-{bound.node_name}"]
        ns, sa = bound.namespace, bound.service_account
        user = {
            "username": f"system:serviceaccount:{ns}:{sa}",
            "uid": f"uid-sa-{ns}-{sa}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                       "system:authenticated"],
            "extra": extra,
        }  # fmt: skip
        return {"authenticated": True, "user": user, "audiences": common}


def _failed(error: str) -> dict[str, Any]:
    return {"user": {}, "error": f"[{error}]"}


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
