"""Which HTTP/1.1 codec runs, and how an operator tells.

``NODEPROXY_CODEC`` (auto | h11 | h11-mypyc) wins over the config's ``codec``;
``auto`` takes the compiled build when installed. The start log line,
``--version``, ``/config_dump`` and ``nodeproxy_build_info`` name the codec
that actually runs. Real processes, as an operator starts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.helpers.proc import running_nodeproxy
from tests.test_compiled_build import EXPECTED_BUILD

h11_mypyc = pytest.importorskip("h11_mypyc", reason="the compiled codec: pip install '.[fast]'")
H11_VERSION = version("h11")
MINIMAL = """\
listeners: [{address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0"}
services: [{name: svc, endpoints: [{address: "127.0.0.1:1"}]}]
"""


def _cli(*args: str, codec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NODEPROXY_CODEC"}
    if codec is not None:
        env["NODEPROXY_CODEC"] = codec
    return subprocess.run(
        [sys.executable, "-m", "nodeproxy", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("codec", "shown"),
    [
        ("h11", f"codec h11 {H11_VERSION}"),
        ("h11-mypyc", f"codec h11-mypyc {h11_mypyc.__version__}"),
        (None, f"codec h11-mypyc {h11_mypyc.__version__}"),  # auto: the compiled one
    ],
)
def test_version_names_the_codec(codec: str | None, shown: str) -> None:
    done = _cli("--version", codec=codec)
    assert done.returncode == 0, done.stderr
    assert shown in done.stdout


def test_an_unknown_codec_is_refused_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(MINIMAL)
    done = _cli("run", "--config", str(config), codec="fast-please")
    assert done.returncode == 1
    assert "NODEPROXY_CODEC='fast-please'" in done.stderr


def test_a_bad_codec_field_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("codec: llhttp\n" + MINIMAL)
    done = _cli("check-config", str(config), codec=None)
    assert done.returncode == 1
    assert "codec" in done.stderr


@pytest.mark.parametrize(
    ("field", "env", "running"),
    [
        ("h11", None, "h11"),  # the config's choice
        ("h11-mypyc", "h11", "h11"),  # the environment wins
        ("auto", None, "h11-mypyc"),
    ],
)
async def test_the_running_codec_is_logged_dumped_and_counted(
    tmp_path: Path, field: str, env: str | None, running: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"codec: {field}\nlog: {{format: json}}\n" + MINIMAL)
    args = ("run", "--config", str(config))
    async with running_nodeproxy(*args, env={"NODEPROXY_CODEC": env}) as p:
        started = next(line for line in p.lines if line.get("event") == "started")
        admin = f"http://127.0.0.1:{p.admin_port}"
        async with httpx.AsyncClient(trust_env=False) as client:
            dump = (await client.get(admin + "/config_dump")).json()
            metrics = (await client.get(admin + "/stats/prometheus")).text
    version = H11_VERSION if running == "h11" else h11_mypyc.__version__
    assert started["codec"] == f"{running} {version}"
    assert dump["codec"] == {"configured": field, "running": running, "version": version}
    build = [line for line in metrics.splitlines() if line.startswith("nodeproxy_build_info{")]
    assert len(build) == 1
    assert f'codec="{running}"' in build[0]
    # and whether its data path is compiled (tests/test_compiled_build.py)
    assert started["data_path"] == dump["data_path"] == EXPECTED_BUILD
    assert f'data_path="{EXPECTED_BUILD}"' in build[0]
    assert build[0].endswith(" 1") or build[0].endswith(" 1.0")
