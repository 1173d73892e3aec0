"""Which certificate each identity presents now, and which ones need renewing.

The rotation task (one per node proxy, for the mesh's mTLS) is the single
owner of a ``CertStore``: it asks ``plan(now, wanted)`` what to do, mints
certificates with ``ca.issue_workload_cert`` (the only slow part, done
outside the store), ``put``s them, and sleeps until ``next_renewal()``.
The store itself does no I/O and reads no clock, so the whole schedule is a
table test. Readers (connection setup) only call ``get``; a put replaces an
immutable ``IssuedCert`` in one step, so a reader never sees half an update.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from nodeproxy.tls.ca import RENEW_FRACTION
from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId, parse_spiffe_id


@dataclass(frozen=True)
class IssuedCert:
    """One identity's certificate and key (PEM), with its parsed validity."""

    spiffe_id: SpiffeId
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    not_before: datetime
    not_after: datetime
    serial: int

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> IssuedCert:
        """Parse ``cert_pem`` once; its single URI SAN must be a SPIFFE ID."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise InvalidSpiffeId("", "certificate has no subject alternative name") from None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise InvalidSpiffeId(",".join(uris), "certificate must have exactly one URI SAN")
        return cls(
            spiffe_id=parse_spiffe_id(uris[0]),
            cert_pem=cert_pem,
            key_pem=key_pem,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=cert.serial_number,
        )

    def renew_at(self, fraction: float = RENEW_FRACTION) -> datetime:
        """When this certificate should be replaced (see ``ca.renew_at``)."""
        return self.not_before + (self.not_after - self.not_before) * fraction


@dataclass(frozen=True)
class RenewalPlan:
    """What the rotation task should do at ``now``.

    ``issue``: identities wanted but without a certificate, or due for renewal
    (sorted, so the order is stable); ``drop``: held but no longer wanted
    (their pods left this node).
    """

    issue: tuple[SpiffeId, ...]
    drop: tuple[SpiffeId, ...]


class CertStore:
    """The current certificate per identity; owned by the rotation task.

    ``renew_fraction`` (default 2/3) is how far into a certificate's life it
    becomes due; an expired certificate is always due.
    """

    def __init__(self, renew_fraction: float = RENEW_FRACTION) -> None:
        if not 0.0 < renew_fraction <= 1.0:
            raise ValueError(f"renew_fraction must be in (0, 1], got {renew_fraction}")
        self._renew_fraction = renew_fraction
        self._certs: dict[SpiffeId, IssuedCert] = {}

    def put(self, issued: IssuedCert) -> IssuedCert | None:
        """Make ``issued`` current for its identity; return the one it replaced."""
        previous = self._certs.get(issued.spiffe_id)
        self._certs[issued.spiffe_id] = issued
        return previous

    def get(self, spiffe_id: SpiffeId) -> IssuedCert | None:
        """The current certificate for ``spiffe_id``, if any."""
        return self._certs.get(spiffe_id)

    def remove(self, spiffe_id: SpiffeId) -> IssuedCert | None:
        """Forget ``spiffe_id`` (its last pod left the node)."""
        return self._certs.pop(spiffe_id, None)

    def due(self, now: datetime) -> list[SpiffeId]:
        """Held identities whose certificate should be renewed at ``now``, sorted."""
        return sorted(
            sid
            for sid, issued in self._certs.items()
            if now >= issued.renew_at(self._renew_fraction)
        )

    def plan(self, now: datetime, wanted: Iterable[SpiffeId]) -> RenewalPlan:
        """Compare the held certificates with the ``wanted`` identities at ``now``."""
        wanted_set = set(wanted)
        missing = wanted_set - self._certs.keys()
        due = {sid for sid in self.due(now) if sid in wanted_set}
        drop = self._certs.keys() - wanted_set
        return RenewalPlan(issue=tuple(sorted(missing | due)), drop=tuple(sorted(drop)))

    def next_renewal(self) -> datetime | None:
        """The earliest renewal time among held certificates (when to wake up next)."""
        times = [issued.renew_at(self._renew_fraction) for issued in self._certs.values()]
        return min(times, default=None)

    def expired(self, now: datetime) -> list[SpiffeId]:
        """Held identities whose certificate is no longer valid at ``now``, sorted."""
        return sorted(sid for sid, issued in self._certs.items() if now >= issued.not_after)

    def __len__(self) -> int:
        return len(self._certs)

    def __iter__(self) -> Iterator[IssuedCert]:
        return iter(list(self._certs.values()))

    def __contains__(self, spiffe_id: object) -> bool:
        return spiffe_id in self._certs

    def __repr__(self) -> str:
        nxt = self.next_renewal()
        when = nxt.strftime("%Y-%m-%dT%H:%M:%SZ") if nxt else "-"
        return f"<CertStore [{len(self._certs)} identities | next renewal {when}]>"
