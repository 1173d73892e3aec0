"""Which build of the data path runs: interpreted, or compiled by mypyc (``nodeproxy/compiled.py``).

``make test`` runs the suite three times: interpreted on each codec from the source tree
(an editable install), then against the wheel ``make compiled`` built with the data path
compiled, installed in a venv of its own (``NODEPROXY_EXPECT_BUILD=compiled``). These tests
make each pass prove it ran the build it claims: a compiled pass that quietly imported
``.py`` files (a fallback build, a source tree on the path) would otherwise pass while
testing nothing compiled, and an interpreted pass must not pick up a stray extension.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import nodeproxy
from nodeproxy import compiled

EXPECTED_BUILD = os.environ.get("NODEPROXY_EXPECT_BUILD", "interpreted")
PACKAGE = Path(nodeproxy.__file__).resolve().parent
EXTENSION = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _loaded_from_extension(module: str) -> bool:
    path = importlib.import_module(module).__file__ or ""
    return path.endswith(EXTENSION)


def test_every_data_path_module_is_the_build_this_pass_expects() -> None:
    assert compiled.status() == EXPECTED_BUILD
    imported = {m: _loaded_from_extension(m) for m in compiled.MODULES}
    assert set(imported.values()) == {EXPECTED_BUILD == "compiled"}, imported


def test_version_names_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nodeproxy", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.rstrip().endswith(f", data path {EXPECTED_BUILD})"), done.stdout


def test_the_module_list_names_modules_of_the_package() -> None:
    paths = [PACKAGE.parent / Path(*m.split(".")).with_suffix(".py") for m in compiled.MODULES]
    assert len(set(paths)) == len(compiled.MODULES)
    assert [p for p in paths if not p.is_file()] == []  # the wheel keeps the .py files too


def test_the_package_is_the_install_this_pass_expects() -> None:
    files = [str(f) for f in importlib.metadata.files("nodeproxy") or []]
    if EXPECTED_BUILD == "interpreted":
        # the source tree itself (make install-test's editable install), not a copy
        assert (PACKAGE.parent / "pyproject.toml").is_file(), PACKAGE
        assert [f for f in files if f.endswith(EXTENSION)] == []
        return
    # the wheel installed in this venv: pip's RECORD lists every extension and the shared
    # library, which is what lets an upgrade or an uninstall remove them (tests/test_wheel.py)
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    assert PACKAGE.parent == site
    for module in compiled.MODULES:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        assert origin is not None, module
        assert str(Path(origin).relative_to(site)) in files, module
    shared = [f for f in files if f.startswith("nodeproxy__mypyc.") and f.endswith(EXTENSION)]
    assert len(shared) == 1, files
    assert "nodeproxy__mypyc" in sys.modules  # the one the compiled modules loaded


def test_the_wheel_is_compiled_against_the_pins_it_installs_with() -> None:
    # mypyc type-checks the data path against the build env's packages (setup.py), so the
    # build env must hold the same releases as the install, and the mypy CI checks with
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    build = set(pyproject["build-system"]["requires"])
    assert set(pyproject["project"]["dependencies"]) <= build
    test = pyproject["project"]["optional-dependencies"]["test"]
    [mypy] = [r for r in test if r.startswith("mypy==")]
    assert mypy in build


def test_some_modules_compiled_and_others_not_is_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    first = compiled.MODULES[0]
    monkeypatch.setattr(compiled, "_is_extension", lambda module: module == first)
    assert compiled.compiled_modules() == [first]
    assert compiled.status() == "partial"  # what --version, the start line and metrics say
    monkeypatch.setattr(compiled, "_is_extension", lambda module: True)
    assert compiled.status() == "compiled"
