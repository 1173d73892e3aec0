"""The wheels setup.py builds, as pip installs and replaces them (``NODEPROXY_COMPILE``).

Run in make test's compiled pass, which built the compiled wheel (``NODEPROXY_WHEEL``) from
a clean copy of the sources (``NODEPROXY_WHEEL_SRC``). Here: the interpreted wheel a machine
without a C compiler builds (with one warning line, or a failed build when compiling is
required), and what an upgrade from the compiled install to it leaves behind: no extension,
which would otherwise shadow the new ``.py`` files. (The interpreted passes run from an
editable install, which must never compile: tests/test_compiled_build.py.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nodeproxy import compiled

pytestmark = pytest.mark.skipif(
    os.environ.get("NODEPROXY_EXPECT_BUILD") != "compiled",
    reason="the compiled pass (make unit-compiled) builds the wheel these tests start from",
)
WARNING = "WARNING: nodeproxy: building the interpreted data path"


def pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip


def newer_sources(tmp: Path) -> Path:
    """A copy of the sources the compiled wheel was built from, one version later."""
    src = tmp / "src"
    shutil.copytree(os.environ["NODEPROXY_WHEEL_SRC"], src)
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'(?m)^version = "(.+)"$', r'version = "\1.post1"', text, count=1))
    return src


def without_a_compiler(tmp: Path, mode: str) -> dict[str, str]:
    """The environment of a machine without gcc: a PATH where nothing is found."""
    (tmp / "empty-bin").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": str(tmp / "empty-bin"), "NODEPROXY_COMPILE": mode}
    env.pop("CC", None)
    return env


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``pip wheel -v`` of the newer sources without a compiler (auto): the wheel, the log."""
    tmp = tmp_path_factory.mktemp("fallback")
    src, out = newer_sources(tmp), tmp / "wheels"
    env = without_a_compiler(tmp, "auto")
    done = pip("wheel", "-v", "--no-deps", "-w", str(out), str(src), env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [wheel] = out.glob("nodeproxy-*.whl")
    return wheel, done.stdout + done.stderr


def test_without_a_compiler_auto_builds_the_interpreted_wheel_and_says_why(
    fallback: tuple[Path, str],
) -> None:
    wheel, log = fallback
    assert wheel.name.endswith("-py3-none-any.whl")  # pure: installs on any CPython
    assert [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")] == []
    [line] = [ln.strip() for ln in log.splitlines() if WARNING in ln]
    assert "no C compiler (gcc not found)" in line, line
    assert "NODEPROXY_COMPILE=1" in line, line


def test_without_a_compiler_NODEPROXY_COMPILE_1_fails_the_build(tmp_path: Path) -> None:
    src = newer_sources(tmp_path)
    env = without_a_compiler(tmp_path, "1")
    done = pip("wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(src), env=env)
    assert done.returncode != 0
    why = "NODEPROXY_COMPILE=1: cannot compile nodeproxy's data path: no C compiler"
    assert why in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "wheels").exists() or not any((tmp_path / "wheels").iterdir())


def test_upgrading_the_compiled_install_removes_every_extension(
    fallback: tuple[Path, str], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip

    def extensions() -> list[str]:
        return sorted(str(p.relative_to(site)) for p in Path(site).rglob("*.so"))

    def installed(*args: str) -> None:
        done = pip("--python", python, *args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    installed("install", "--no-deps", os.environ["NODEPROXY_WHEEL"])
    assert len(extensions()) == len(compiled.MODULES) + 1  # and mypyc's shared library
    installed("install", "--no-deps", "--upgrade", str(fallback[0]))
    assert extensions() == []  # none left to shadow the new .py files
    assert (Path(site) / "nodeproxy" / "pipeline.py").is_file()
    installed("uninstall", "-y", "nodeproxy")
    assert sorted(p.name for p in Path(site).glob("nodeproxy*")) == []
