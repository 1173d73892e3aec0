"""One signing request, start to finish: parse, authenticate, find the node, decide, sign.

The order is chosen so that the cheap local checks come first (a malformed
body never costs an API call) and the API is asked at most three things:
the TokenReview, the bound pod (only when the token does not name its node)
and the pods on that node (only when a workload identity is asked for).

mTLS: a node proxy that already holds its node certificate presents it; it
must then be *that node's* certificate, so a stolen token alone cannot be
used from another node that has a certificate of its own. The first request
of a new node has none yet (the token is the credential, as for istiod).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from nodeproxy.signer.authorize import caller_from_review, decide, node_of_pod
from nodeproxy.signer.kubeapi import KubeApi
from nodeproxy.signer.protocol import (
    AUDIENCE,
    SignerRefused,
    SignRequest,
    SignResponse,
    bad_request,
)
from nodeproxy.tls.ca import CertificateAuthority, PublicKey, certify, utc_now
from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId, parse_spiffe_id

log = structlog.get_logger("nodeproxy.signer")


def parse_csr(pem: bytes, trust_domain: str) -> tuple[SpiffeId, PublicKey]:
    """The identity a CSR asks for and the key to certify; 400 for anything else."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise bad_request("a CSR is not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise bad_request("a CSR's signature does not match its key")
    key = csr.public_key()
    if not (
        isinstance(key, ed25519.Ed25519PublicKey)
        or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))
    ):
        raise bad_request("a CSR's key must be EC P-256 or Ed25519")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise bad_request("a CSR has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(list(san)) != 1:
        raise bad_request("a CSR must name exactly one SPIFFE ID (one URI SAN, nothing else)")
    try:
        sid = parse_spiffe_id(uris[0])
    except InvalidSpiffeId as exc:
        raise bad_request(str(exc)) from None
    if sid.trust_domain != trust_domain:
        raise bad_request(f"{sid} is outside trust domain {trust_domain!r}")
    return sid, key


@dataclass
class Signer:
    """Holds the CA; ``sign`` answers one request (or raises ``SignerRefused``)."""

    ca: CertificateAuthority
    api: KubeApi
    node_accounts: frozenset[tuple[str, str]]  # the node proxies' (namespace, service account)
    audience: str = AUDIENCE
    max_lifetime: timedelta = timedelta(hours=24)
    clock: Callable[[], datetime] = utc_now  # wall clock: certificate validity only
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> requests
    issued: int = 0  # certificates signed
    refused: int = 0  # identities refused (beside others, or in a 403)

    def __repr__(self) -> str:
        seen = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no requests"
        return f"<Signer {self.ca.trust_domain} [{seen}] {self.api!r}>"

    def metrics(self) -> str:
        """Prometheus text for ``GET /metrics``: outcomes and certificates."""
        lines = [
            "# HELP nodeproxy_signer_requests_total Signing requests answered, by outcome.",
            "# TYPE nodeproxy_signer_requests_total counter",
            *(
                f'nodeproxy_signer_requests_total{{outcome="{k}"}} {v}'
                for k, v in sorted(self.counts.items())
            ),
            "# HELP nodeproxy_signer_certificates_total Certificates signed.",
            "# TYPE nodeproxy_signer_certificates_total counter",
            f"nodeproxy_signer_certificates_total {self.issued}",
            "# HELP nodeproxy_signer_refusals_total Identities refused (no pod on the node...).",
            "# TYPE nodeproxy_signer_refusals_total counter",
            f"nodeproxy_signer_refusals_total {self.refused}",
        ]
        return "\n".join(lines) + "\n"

    async def sign(
        self, token: str | None, body: bytes, client: SpiffeId | None = None
    ) -> SignResponse:
        try:
            response = await self._sign(token, body, client)
        except SignerRefused as exc:
            self.counts[exc.cause] = self.counts.get(exc.cause, 0) + 1
            self.refused += len(exc.refused)
            log.info("sign_refused", status=exc.status, cause=exc.cause, reason=exc.reason)
            raise
        self.counts["signed"] = self.counts.get("signed", 0) + 1
        self.issued += len(response.issued)
        self.refused += len(response.refused)
        log.info(
            "signed",
            node=response.node,
            identities=[sid for sid, _ in response.issued],
            refused=[r.spiffe_id for r in response.refused],
        )
        return response

    async def _sign(self, token: str | None, body: bytes, client: SpiffeId | None) -> SignResponse:
        if not token:
            raise SignerRefused(401, "unauthenticated", "no bearer token")
        request = SignRequest.from_json(body)
        wanted: dict[SpiffeId, PublicKey] = {}
        for pem in request.csrs:
            sid, key = parse_csr(pem, self.ca.trust_domain)
            wanted[sid] = key  # the last CSR for an identity wins
        caller = caller_from_review(
            await self.api.review(token, self.audience), self.audience, self.node_accounts
        )
        node = caller.node_name
        if node is None:
            if caller.pod_name is None:
                raise SignerRefused(403, "forbidden", "the token is not bound to a pod")
            node = node_of_pod(caller, await self.api.get_pod(caller.namespace, caller.pod_name))
        node_id = SpiffeId.node(node, self.ca.trust_domain)
        if client is not None and client != node_id:
            raise SignerRefused(
                403,
                "forbidden",
                f"the client certificate is {client}, but the token is {node_id}'s",
            )
        accounts: Iterable[tuple[str, str]] = ()
        if any(sid.kind == "workload" for sid in wanted):
            accounts = await self.api.accounts_on_node(node)
        allowed, refused = decide(sorted(wanted), node, accounts)
        if not allowed:
            raise SignerRefused(403, "forbidden", refused[0].reason, tuple(refused))
        lifetime = self.max_lifetime
        if request.lifetime_seconds is not None:
            lifetime = min(lifetime, timedelta(seconds=request.lifetime_seconds))
        now = self.clock()
        issued = tuple(
            (str(sid), _pem(certify(self.ca, wanted[sid], sid, now=now, lifetime=lifetime)))
            for sid in allowed
        )
        return SignResponse(node, issued, tuple(refused))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
