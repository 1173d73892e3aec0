"""The local certificate authority: CA files, workload certificates, renewal timing.

Apps carry no certificates: each node proxy mints short-lived X.509-SVIDs
(default 24 h) for the workloads on its own node, signed by one mesh root CA.
Short lives make revocation unnecessary (a stolen key is useless in a day)
and renewal at two thirds of life leaves a third of the lifetime to retry.

Decisions kept here, in one place:

- Keys: EC P-256 (default, widest TLS support) or Ed25519. No RSA.
- The CA key file is written 0600, atomically, and never overwritten unless
  asked (``force``): losing the root key means re-issuing the whole mesh.
- Certificates carry the SPIFFE ID as their only URI SAN; the CA carries the
  bare trust domain (``spiffe://<td>``), which is how ``load_ca`` learns it.
- ``not_before`` is backdated by ``CLOCK_SKEW`` so that a peer whose clock
  is a little behind does not reject a certificate minted a second ago.
- Everything takes ``now`` as an argument: these are pure functions over
  wall-clock datetimes (certificate validity is the one legitimate use of the
  wall clock), so the renewal table is a plain unit test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodeproxy.tls.files import RefusedOverwrite, write_file
from nodeproxy.tls.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, validate_trust_domain

KeyType = Literal["ec-p256", "ed25519"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DEFAULT_LIFETIME = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=5)
RENEW_FRACTION = 2 / 3


class CAError(Exception):
    """The CA cannot be created, loaded or used (message says why and what to do)."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded root CA: its certificate, signing key and trust domain."""

    cert: x509.Certificate
    key: PrivateKey
    trust_domain: str

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM (what peers trust, ``cadata=`` for ssl)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return (
            f"<CertificateAuthority {self.trust_domain} {key_type_of(self.key)} "
            f"valid until {self.cert.not_valid_after_utc:%Y-%m-%d}>"
        )


def utc_now() -> datetime:
    """The current UTC time, for callers that need a ``now`` for certificates."""
    return datetime.now(UTC)  # wall clock: certificate validity


def generate_key(key_type: str) -> PrivateKey:
    """A fresh private key of ``key_type`` ("ec-p256" or "ed25519")."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CAError(f"unknown key type {key_type!r} (expected one of {', '.join(KEY_TYPES)})")


def key_type_of(key: object) -> str:
    """The KeyType name of a private or public key, for messages and checks."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec-p256" if isinstance(key.curve, ec.SECP256R1) else f"ec-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the caller decides where it may live."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def build_ca(
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    key_type: str = "ec-p256",
    validity_days: int = 3650,
    *,
    now: datetime,
) -> CertificateAuthority:
    """A new self-signed root CA in memory (``init_ca`` also writes it out)."""
    validate_trust_domain(trust_domain)
    if validity_days < 1:
        raise CAError(f"CA validity must be at least 1 day, got {validity_days}")
    key = generate_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "nodeproxy mesh root CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    return CertificateAuthority(_sign(builder, key), key, trust_domain)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(
    directory: str | os.PathLike[str],
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    key_type: str = "ec-p256",
    validity_days: int = 3650,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> CertificateAuthority:
    """Create a root CA and write ``ca.crt`` (0644) and ``ca.key`` (0600) in ``directory``.

    Refuses (CAError) when either file exists, unless ``force``. The directory
    is created 0700 when missing.
    """
    path = Path(directory)
    cert_path, key_path = path / CA_CERT_FILE, path / CA_KEY_FILE
    if not force:
        for existing in (cert_path, key_path):
            if existing.exists():
                raise CAError(f"{existing} exists; refusing to overwrite a CA (use --force)")
    ca = build_ca(trust_domain, key_type, validity_days, now=now or utc_now())
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_file(key_path, private_key_pem(ca.key), mode=0o600, force=force)
        write_file(cert_path, ca.cert_pem, mode=0o644, force=force)
    except RefusedOverwrite as exc:  # lost a race with another init: same answer
        raise CAError(str(exc)) from None
    return ca


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    """Load ``ca.crt`` and ``ca.key`` from ``directory``, checking they belong together."""
    path = Path(directory)
    cert, trust_domain = load_ca_cert(path / CA_CERT_FILE)
    try:
        key = serialization.load_pem_private_key((path / CA_KEY_FILE).read_bytes(), password=None)
    except OSError as exc:
        raise CAError(f"cannot read the CA in {path}: {exc.strerror} ({exc.filename})") from None
    except (ValueError, TypeError) as exc:
        raise CAError(f"cannot parse the CA in {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise CAError(f"unsupported CA key type {key_type_of(key)} (use {', '.join(KEY_TYPES)})")
    if cert.public_key() != key.public_key():
        raise CAError(f"{CA_KEY_FILE} does not match {CA_CERT_FILE} in {path}")
    return CertificateAuthority(cert, key, trust_domain)


def load_ca_cert(path: str | os.PathLike[str]) -> tuple[x509.Certificate, str]:
    """The CA certificate alone (what a node holds with a signer) and its trust domain."""
    path = Path(path)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CAError(f"cannot read the CA in {path.parent}: {exc.strerror} ({path})") from None
    except ValueError as exc:
        raise CAError(f"cannot parse the CA in {path.parent}: {exc}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{path} is not a CA certificate")
    return cert, _trust_domain_of(cert, path)


def _trust_domain_of(cert: x509.Certificate, file: Path) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san else []
    for uri in uris:
        if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return validate_trust_domain(uri[len("spiffe://") :])
    raise CAError(f"{file} names no trust domain (URI SAN spiffe://<td>)")


def issue_workload_cert(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId,
    *,
    now: datetime,
    lifetime: timedelta = DEFAULT_LIFETIME,
    key_type: str = "ec-p256",
) -> tuple[bytes, bytes]:
    """Mint a certificate and a fresh key for ``spiffe_id``: (cert PEM, key PEM)."""
    key = generate_key(key_type)
    cert = certify(ca, key.public_key(), spiffe_id, now=now, lifetime=lifetime)
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def certify(
    ca: CertificateAuthority,
    public_key: PublicKey,
    identity: SpiffeId | Sequence[str],
    *,
    now: datetime,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> x509.Certificate:
    """Sign ``public_key`` for ``identity``: a SPIFFE ID (its only URI SAN) or DNS names.

    Valid from ``now - CLOCK_SKEW`` to ``now + lifetime``, clamped to the CA's
    own expiry. Usable as TLS client and server (both ends of a hop present
    one). DNS names are only for the signer's own serving certificate: no
    certificate ever carries both, so a node's certificate never names a host.
    """
    if isinstance(identity, SpiffeId):
        if identity.trust_domain != ca.trust_domain:
            raise CAError(f"{identity} is outside this CA's trust domain {ca.trust_domain!r}")
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        common_name = identity.path[-64:]
    else:
        if not identity:
            raise CAError("a certificate needs a SPIFFE ID or at least one DNS name")
        sans = [x509.DNSName(name) for name in identity]
        common_name = identity[0][:64]
    if lifetime <= timedelta(0):
        raise CAError(f"certificate lifetime must be positive, got {lifetime}")
    not_before = now - CLOCK_SKEW
    not_after = min(now + lifetime, ca.cert.not_valid_after_utc)
    if not_after <= max(not_before, ca.cert.not_valid_before_utc):
        raise CAError(f"the CA is not valid at {now.isoformat()} (expired or not yet valid)")
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
    )
    return _sign(builder, ca.key)


def renew_at(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> datetime:
    """When ``cert`` should be replaced: ``fraction`` of the way through its validity."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def renewal_due(cert: x509.Certificate, now: datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True once ``now`` has reached ``renew_at(cert)`` (and for expired certificates)."""
    return now >= renew_at(cert, fraction)
