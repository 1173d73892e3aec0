"""``nodeproxy ca ...``: create the mesh root CA and issue certificates by hand.

    nodeproxy ca init  --dir DIR [--trust-domain TD] [--key-type ec-p256|ed25519]
                       [--validity-days N] [--force]
    nodeproxy ca issue --dir DIR --spiffe-id ID --out-cert F --out-key F
                       [--lifetime 24h] [--key-type ...] [--force]

Node proxies mint workload certificates themselves; ``issue`` is for
operators (debugging with curl/openssl, a client outside the mesh). Written
keys are 0600 and nothing is overwritten without ``--force``. Kept apart
from ``nodeproxy/cli.py`` so the main CLI only wires two functions in.
Errors print one line to stderr and exit 1, like a config error.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from nodeproxy.tls.ca import (
    CLOCK_SKEW,
    KEY_TYPES,
    CAError,
    init_ca,
    issue_workload_cert,
    load_ca,
    renew_at,
    utc_now,
)
from nodeproxy.tls.files import RefusedOverwrite, write_file
from nodeproxy.tls.identity import DEFAULT_TRUST_DOMAIN, InvalidSpiffeId, parse_spiffe_id

EXIT_ERROR = 1
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_lifetime(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``3600s`` (or a sum like ``1h30m``) -> timedelta."""
    text = text.strip().lower()
    pos, total = 0, timedelta(0)
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        pos = m.end()
    if pos != len(text) or not text or total <= timedelta(0):
        raise argparse.ArgumentTypeError(
            f"bad duration {text!r} (examples: 24h, 90m, 7d, 1h30m; must be > 0)"
        )
    return total


def add_ca_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ca init`` / ``ca issue`` to the main parser's subparsers; returns the ``ca`` parser.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned.
    """
    ca = subparsers.add_parser("ca", help="the mesh root CA: init, issue certificates")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create ca.crt and ca.key (0600) in a directory")
    init.add_argument("--dir", required=True, type=Path, help="where ca.crt and ca.key go")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    init.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    init.add_argument("--validity-days", type=int, default=3650)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = ca_sub.add_parser("issue", help="issue a certificate for a SPIFFE ID")
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue.add_argument("--spiffe-id", required=True, help="spiffe://<td>/ns/<ns>/sa/<sa>")
    issue.add_argument("--out-cert", required=True, type=Path)
    issue.add_argument("--out-key", required=True, type=Path)
    issue.add_argument("--lifetime", type=parse_lifetime, default=timedelta(hours=24))
    issue.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    issue.add_argument("--force", action="store_true", help="replace existing output files")
    return ca  # type: ignore[no-any-return]  # argparse's subparsers action is untyped here


def run_ca_command(args: argparse.Namespace) -> int:
    """Run a parsed ``ca`` command; returns the exit status (0 ok, 1 error)."""
    try:
        if args.ca_command == "init":
            return _init(args)
        if args.ca_command == "issue":
            return _issue(args)
    except (CAError, InvalidSpiffeId, RefusedOverwrite) as exc:
        print(f"nodeproxy: ca {args.ca_command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"nodeproxy: ca {args.ca_command}: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    print(f"nodeproxy: unknown ca command {args.ca_command!r}", file=sys.stderr)
    return EXIT_ERROR


def _init(args: argparse.Namespace) -> int:
    ca = init_ca(args.dir, args.trust_domain, args.key_type, args.validity_days, force=args.force)
    print(
        f"created CA for trust domain {ca.trust_domain} ({args.key_type}) in {args.dir}: "
        f"ca.crt, ca.key (0600); valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    spiffe_id = parse_spiffe_id(args.spiffe_id)
    ca = load_ca(args.dir)
    cert_pem, key_pem = issue_workload_cert(
        ca, spiffe_id, now=utc_now(), lifetime=args.lifetime, key_type=args.key_type
    )
    if not args.force:
        for path in (args.out_cert, args.out_key):
            if path.exists():
                raise CAError(f"{path} exists; refusing to overwrite it (use --force)")
    write_file(args.out_key, key_pem, mode=0o600, force=args.force)
    write_file(args.out_cert, cert_pem, mode=0o644, force=args.force)
    cert = x509.load_pem_x509_certificate(cert_pem)
    print(
        f"issued {spiffe_id} -> {args.out_cert}, {args.out_key} (0600); "
        f"valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} (backdated {CLOCK_SKEW}) to "
        f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, renew at "
        f"{renew_at(cert):%Y-%m-%dT%H:%M:%SZ}"
    )
    return 0
