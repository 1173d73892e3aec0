"""Which build of the data path runs: interpreted, or compiled by mypyc (``nodeproxy/compiled.py``).

``make test`` runs the suite three times: interpreted on each codec, then on a copy of
the tree whose data path ``make compiled`` compiled (``NODEPROXY_EXPECT_BUILD=compiled``).
These tests make each pass prove it ran the build it claims: a compiled pass that quietly
imported the ``.py`` files (a failed build, a wrong path) would otherwise pass while
testing nothing compiled, and an interpreted pass must not pick up a stray extension.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeproxy import compiled

EXPECTED_BUILD = os.environ.get("NODEPROXY_EXPECT_BUILD", "interpreted")
ROOT = Path(compiled.__file__).resolve().parent.parent


def _loaded_from_extension(module: str) -> bool:
    path = importlib.import_module(module).__file__ or ""
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


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


def test_the_module_list_names_files_of_the_tree() -> None:
    files = compiled.sources(ROOT)
    assert len(files) == len(compiled.MODULES) == len(set(files))
    assert "nodeproxy/pipeline.py" in files


def test_a_missing_module_or_a_source_tree_is_refused_before_compiling(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nodeproxy/netio\.py"):
        compiled.build(tmp_path)  # an empty tree
    for source in compiled.sources(ROOT):
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    with pytest.raises(FileExistsError, match="source tree"):
        compiled.build(tmp_path)  # its .so files would shadow every later edit
    assert compiled.main([str(tmp_path)]) == 1  # the same, as one line for the CLI
    assert compiled.main([]) == 2  # usage


def test_some_modules_compiled_and_others_not_is_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    first = compiled.MODULES[0]
    monkeypatch.setattr(compiled, "_is_extension", lambda module: module == first)
    assert compiled.compiled_modules() == [first]
    assert compiled.status() == "partial"  # what --version, the start line and metrics say
    monkeypatch.setattr(compiled, "_is_extension", lambda module: True)
    assert compiled.status() == "compiled"
