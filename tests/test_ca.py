"""The local CA: files and modes, issued certificates checked with cryptography, renewal timing,
the CertStore schedule, and the ``nodeproxy ca`` commands."""

from __future__ import annotations

import argparse
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from nodeproxy.tls.ca import (
    CLOCK_SKEW,
    CAError,
    CertificateAuthority,
    build_ca,
    init_ca,
    issue_workload_cert,
    load_ca,
    renew_at,
    renewal_due,
)
from nodeproxy.tls.cli import add_ca_subcommands, parse_lifetime, run_ca_command
from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId
from nodeproxy.tls.store import CertStore, IssuedCert

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WEB = SpiffeId.workload("shop", "webserver")
DB = SpiffeId.workload("shop", "database")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return build_ca("cluster.local", now=T0 - timedelta(days=1))


def issue(ca: CertificateAuthority, sid: SpiffeId = WEB, **kw: object) -> x509.Certificate:
    cert_pem, _ = issue_workload_cert(ca, sid, now=kw.pop("now", T0), **kw)  # type: ignore[arg-type]
    return x509.load_pem_x509_certificate(cert_pem)


# -- CA files ------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "ed25519"])
def test_init_writes_key_0600_and_loads_back(tmp_path: Path, key_type: str) -> None:
    ca_dir = tmp_path / "ca"
    created = init_ca(ca_dir, "example.org", key_type=key_type, validity_days=30)
    assert mode(ca_dir / "ca.key") == 0o600
    assert mode(ca_dir / "ca.crt") == 0o644
    assert mode(ca_dir) == 0o700
    loaded = load_ca(ca_dir)
    assert loaded.trust_domain == "example.org"
    assert loaded.cert == created.cert
    assert loaded.key.public_key() == created.cert.public_key()
    assert key_type in repr(loaded)
    assert "example.org" in repr(loaded)
    life = loaded.cert.not_valid_after_utc - loaded.cert.not_valid_before_utc
    assert life == timedelta(days=30) + CLOCK_SKEW
    constraints = loaded.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    key_before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(CAError, match="refusing to overwrite"):
        init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == key_before
    (tmp_path / "ca.crt").unlink()  # half a CA left behind is still refused
    with pytest.raises(CAError, match=r"ca\.key exists"):
        init_ca(tmp_path)
    second = init_ca(tmp_path, force=True)
    assert second.cert != first.cert
    assert (tmp_path / "ca.key").read_bytes() != key_before
    assert mode(tmp_path / "ca.key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temp left


def test_load_ca_errors(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="cannot read"):
        load_ca(tmp_path / "missing")
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CAError, match="does not match"):
        load_ca(tmp_path / "a")
    (tmp_path / "b" / "ca.crt").write_bytes(b"not a pem")
    with pytest.raises(CAError, match="cannot parse"):
        load_ca(tmp_path / "b")


def test_a_leaf_is_not_accepted_as_a_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_pem, key_pem = issue_workload_cert(ca, WEB, now=T0)
    (tmp_path / "ca.crt").write_bytes(cert_pem)
    (tmp_path / "ca.key").write_bytes(key_pem)
    with pytest.raises(CAError, match="not a CA"):
        load_ca(tmp_path)


# -- issued certificates -------------------------------------------------------


def test_workload_cert_profile(ca: CertificateAuthority) -> None:
    cert = issue(ca)
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
    assert len(list(san)) == 1
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_before_utc == T0 - CLOCK_SKEW
    assert cert.not_valid_after_utc == T0 + timedelta(hours=24)
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)


def test_chain_verifies_with_cryptography_only_while_valid(ca: CertificateAuthority) -> None:
    cert = issue(ca, lifetime=timedelta(hours=1))

    def verify(at: datetime) -> list[x509.GeneralName]:
        verifier = PolicyBuilder().store(Store([ca.cert])).time(at).build_client_verifier()
        return list(verifier.verify(cert, []).subjects or [])

    assert verify(T0) == [x509.UniformResourceIdentifier(WEB.uri)]
    assert verify(T0 - CLOCK_SKEW + timedelta(seconds=1))  # the backdate covers skew
    for outside in (T0 - CLOCK_SKEW - timedelta(seconds=1), T0 + timedelta(hours=1, seconds=1)):
        with pytest.raises(VerificationError):
            verify(outside)
    other = build_ca("cluster.local", now=T0)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other.cert])).time(T0).build_client_verifier().verify(cert, [])


def test_ed25519_ca_and_leaf() -> None:
    ca = build_ca("cluster.local", key_type="ed25519", now=T0)
    cert = issue(ca, SpiffeId.node("n1"), key_type="ed25519")
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    cert.verify_directly_issued_by(ca.cert)  # the web-PKI verifier forbids Ed25519


def test_issue_refusals(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="trust domain"):
        issue_workload_cert(ca, SpiffeId.workload("a", "b", "other.org"), now=T0)
    with pytest.raises(CAError, match="positive"):
        issue_workload_cert(ca, WEB, now=T0, lifetime=timedelta(0))
    with pytest.raises(CAError, match="not valid"):
        issue_workload_cert(ca, WEB, now=T0 + timedelta(days=3651))
    with pytest.raises(CAError, match="unknown key type"):
        issue_workload_cert(ca, WEB, now=T0, key_type="rsa-2048")


def test_lifetime_is_clamped_to_the_ca_expiry() -> None:
    short_ca = build_ca(now=T0, validity_days=1)
    cert = issue(short_ca, now=T0 + timedelta(hours=20), lifetime=timedelta(hours=24))
    assert cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


# -- renewal timing ------------------------------------------------------------

# 24 h life + 5 min backdate: 2/3 of 24h05m = 16h03m20s after not_before.
RENEW = T0 - CLOCK_SKEW + timedelta(hours=16, minutes=3, seconds=20)


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (T0, False),
        (T0 + timedelta(hours=15), False),
        (RENEW - timedelta(seconds=1), False),
        (RENEW, True),
        (T0 + timedelta(hours=23), True),
        (T0 + timedelta(days=3), True),  # expired: certainly due
    ],
)
def test_renewal_due_table(ca: CertificateAuthority, now: datetime, due: bool) -> None:
    cert = issue(ca)
    assert renew_at(cert) == RENEW
    assert renewal_due(cert, now) is due


def test_renew_fraction_is_configurable(ca: CertificateAuthority) -> None:
    cert = issue(ca, lifetime=timedelta(hours=10) - CLOCK_SKEW)
    assert renew_at(cert, 0.5) == T0 - CLOCK_SKEW + timedelta(hours=5)


# -- the CertStore -------------------------------------------------------------


def issued(ca: CertificateAuthority, sid: SpiffeId, now: datetime) -> IssuedCert:
    return IssuedCert.from_pem(*issue_workload_cert(ca, sid, now=now))


def test_cert_store_plans_issue_renew_and_drop(ca: CertificateAuthority) -> None:
    store = CertStore()
    node = SpiffeId.node("n1")
    assert store.plan(T0, [WEB, node]).issue == (node, WEB)
    assert store.next_renewal() is None
    web = issued(ca, WEB, T0)
    assert store.put(web) is None
    store.put(issued(ca, DB, T0 + timedelta(hours=8)))
    assert store.get(WEB) is web
    assert WEB in store
    assert len(store) == 2
    assert store.next_renewal() == web.renew_at() == RENEW
    plan = store.plan(T0 + timedelta(hours=1), [WEB, node])
    assert (plan.issue, plan.drop) == ((node,), (DB,))
    plan = store.plan(RENEW, [WEB, DB])
    assert (plan.issue, plan.drop) == ((WEB,), ())
    assert store.due(RENEW + timedelta(hours=8)) == [DB, WEB]
    assert store.expired(T0 + timedelta(hours=24)) == [WEB]
    renewed = issued(ca, WEB, RENEW)
    assert store.put(renewed) is web
    assert store.due(RENEW) == []
    assert store.remove(DB) is not None
    assert DB not in store
    assert repr(store).startswith("<CertStore [1 identities | next renewal 2030-01-02T")


def test_issued_cert_requires_one_spiffe_uri(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidSpiffeId, match="missing path"):  # the CA's SAN: spiffe://<td>
        IssuedCert.from_pem(ca.cert_pem, b"")
    dns_only = trustme.CA().issue_cert("web.example")
    with pytest.raises(InvalidSpiffeId, match="exactly one URI SAN"):
        IssuedCert.from_pem(dns_only.cert_chain_pems[0].bytes(), b"")
    with pytest.raises(ValueError, match="renew_fraction"):
        CertStore(renew_fraction=0)


# -- the `nodeproxy ca` commands -----------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="nodeproxy")
    add_ca_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ca", *argv])
    assert args.command == "ca"
    return run_ca_command(args)


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli("init", "--dir", str(ca_dir), "--trust-domain", "mesh.test") == 0
    assert "mesh.test" in capsys.readouterr().out
    assert run_cli("init", "--dir", str(ca_dir)) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    out_cert, out_key = tmp_path / "web.crt", tmp_path / "web.key"
    sid = "spiffe://mesh.test/ns/shop/sa/webserver"
    argv = ["issue", "--dir", str(ca_dir), "--spiffe-id", sid]
    argv += ["--out-cert", str(out_cert), "--out-key", str(out_key), "--lifetime", "2h"]
    assert run_cli(*argv) == 0
    assert sid in capsys.readouterr().out
    assert mode(out_key) == 0o600
    cert = x509.load_pem_x509_certificate(out_cert.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=2) + CLOCK_SKEW
    cert.verify_directly_issued_by(load_ca(ca_dir).cert)
    assert run_cli(*argv) == 1
    assert "exists" in capsys.readouterr().err
    assert run_cli(*argv, "--force") == 0


def test_cli_issue_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(tmp_path / "ca")
    base = ["issue", "--dir", str(tmp_path / "ca"), "--out-cert", "c", "--out-key", "k"]
    assert run_cli(*base, "--spiffe-id", "spiffe://cluster.local/ns/x") == 1
    assert "invalid SPIFFE ID" in capsys.readouterr().err
    assert run_cli(*base, "--spiffe-id", "spiffe://other.org/ns/a/sa/b") == 1
    assert "trust domain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--spiffe-id", WEB.uri, "--lifetime", "soon")
    assert "bad duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        ("3600s", timedelta(hours=1)),
    ],
)
def test_parse_lifetime(text: str, expected: timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize("text", ["", "0h", "h", "24", "1x", "-1h", "1h 2m"])
def test_parse_lifetime_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_lifetime(text)
