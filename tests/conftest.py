"""Shared pytest setup. Fixtures live in tests/helpers/ modules owned by each area."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # The data-path fuzz (tests/test_fuzz_dataplane.py): how long, and which run.
    parser.addoption(
        "--fuzz-seconds",
        type=float,
        default=float(os.environ.get("NODEPROXY_FUZZ_SECONDS", "12")),
        help="seconds of mutation fuzzing against a running proxy (env NODEPROXY_FUZZ_SECONDS)",
    )
    parser.addoption(
        "--fuzz-seed",
        type=int,
        default=int(os.environ["NODEPROXY_FUZZ_SEED"])
        if "NODEPROXY_FUZZ_SEED" in os.environ
        else None,
        help="replay one fuzz run (env NODEPROXY_FUZZ_SEED); default: a new seed per run",
    )
