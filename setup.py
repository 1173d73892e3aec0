"""Why a setup.py beside pyproject.toml (which stays the metadata source): to put nodeproxy's
data path (``MODULES`` in nodeproxy/compiled.py) into the wheel compiled by mypyc, as black
ships its mypyc wheels. The extensions are then files of the wheel, in its RECORD, so pip's
upgrade and uninstall remove them with the .py files (an install compiled in place would
leave stale ones shadowing newer .py files).

``NODEPROXY_COMPILE``: ``auto`` (default) compiles a regular wheel when it can, else builds
the interpreted one with one warning line saying why (as pyyaml and markupsafe fall back
from their C speedups); ``1`` fails the build when it cannot compile; ``0`` never compiles.
Editable installs (``editable_wheel``) and metadata steps never compile: extensions in a
source tree would shadow every later edit of its .py files.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

# mypyc type-checks what the modules import: the runtime dependencies are in the build env
# ([build-system] requires), but pyyaml ships no types (types-PyYAML is a test dependency).
MYPY_CONFIG = "[mypy]\n\n[mypy-yaml.*]\nignore_missing_imports = True\n"
HOW = "install gcc and the Python headers (e.g. apt-get install gcc python3-dev)"


def modules() -> list[str]:
    """``MODULES`` of nodeproxy/compiled.py, read without importing nodeproxy."""
    tree = ast.parse(Path("nodeproxy/compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: no MODULES = (...) in nodeproxy/compiled.py")


def missing() -> str | None:
    """Why this machine cannot compile the data path, or None when it can."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (mypy==2.4.1; pip installs it unless --no-build-isolation)"
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return f"no C compiler ({compiler[0] if compiler else 'CC'} not found); {HOW}"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"no Python.h for Python {sysconfig.get_python_version()}; {HOW}"
    return None


def compile_data_path() -> bool:
    mode = os.environ.get("NODEPROXY_COMPILE", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"NODEPROXY_COMPILE={mode!r}: use auto, 1 or 0")
    if mode == "0" or "bdist_wheel" not in sys.argv or "editable_wheel" in sys.argv:
        return False
    why = missing()
    if why is None:
        return True
    if mode == "1":
        raise SystemExit(f"NODEPROXY_COMPILE=1: cannot compile nodeproxy's data path: {why}")
    print(
        f"WARNING: nodeproxy: building the interpreted data path (slower): {why}, then"
        " reinstall with pip's --no-cache-dir (pip keeps the wheel it built);"
        " NODEPROXY_COMPILE=1 fails instead of falling back",
        file=sys.stderr,
    )
    return False


def extensions() -> list[Extension]:
    if not compile_data_path():
        return []
    from mypyc.build import mypycify

    config = Path("build", "nodeproxy-mypyc.ini")
    config.parent.mkdir(exist_ok=True)
    config.write_text(MYPY_CONFIG)
    files = [str(Path(*m.split(".")).with_suffix(".py")) for m in modules()]
    # group_name: the shared library is nodeproxy__mypyc.*.so, not <hash>__mypyc.*.so
    built: list[Extension] = mypycify(
        ["--config-file", str(config), *files], group_name="nodeproxy"
    )
    return built


setup(ext_modules=extensions())
