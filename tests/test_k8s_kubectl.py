"""Keeps the fake API server honest: the real ``kubectl`` lists and watches it.

If kubectl understands the fake's discovery documents, list bodies, paging and
chunked watch events, the fake speaks the wire protocol our reflector is
tested against. Skipped when kubectl is not installed. Real time here
(kubectl is another process), bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes.apiserver import FakeApiServer, fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, service

SERVICE_NAME = "kubernetes.io/service-name"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def kubectl(api: FakeApiServer, home: Path, *args: str) -> list[str]:
    assert KUBECTL is not None
    (home / "empty-kubeconfig").touch()
    return [KUBECTL, f"--kubeconfig={home / 'empty-kubeconfig'}", f"--cache-dir={home / 'cache'}",
            "--server", api.url, "--request-timeout=10s", *args]  # fmt: skip


def seed(api: FakeApiServer) -> None:
    api.add("services", service("bdgreeter", [("http", 80, 8080)]))
    for i in range(3):
        sl = endpoint_slice(f"bd-{i}", "bdgreeter", [endpoint(f"10.0.{i}.1")])
        api.add("endpointslices", sl)
    other = endpoint_slice("db-0", "db", [endpoint("10.1.0.1")], ns="prod")
    api.add("endpointslices", other)


async def test_kubectl_lists_with_paging_and_selectors(tmp_path: Path) -> None:
    async with fake_apiserver() as api:
        seed(api)
        with trio.fail_after(30):
            cmd = kubectl(api, tmp_path, "get", "endpointslices", "-A", "-o", "json",
                          "--chunk-size=2", "-l", f"{SERVICE_NAME}=bdgreeter")  # fmt: skip
            done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)
            doc = json.loads(done.stdout)
            assert [i["metadata"]["name"] for i in doc["items"]] == ["bd-0", "bd-1", "bd-2"]
            assert {i["kind"] for i in doc["items"]} == {"EndpointSlice"}
            assert any("continue=" in t for t, _ in api.requests)  # kubectl followed a page
            cmd = kubectl(api, tmp_path, "get", "svc", "-n", "default", "-o", "name")
            done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)
            assert done.stdout.decode().split() == ["service/bdgreeter"]
            cmd = kubectl(api, tmp_path, "get", "pods", "-A", "--field-selector", "bad.field=x")
            bad = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
            assert bad.returncode != 0
            assert b"field label not supported" in bad.stderr


async def test_kubectl_watch_sees_added_modified_deleted(tmp_path: Path) -> None:
    async with fake_apiserver() as api:
        seed(api)
        listed_at = api.state.version
        cmd = kubectl(api, tmp_path, "get", "endpointslices", "-A", "-w", "-o", "json",
                      "--output-watch-events")  # fmt: skip
        events: list[dict[str, Any]] = []
        buf = ""
        decoder = json.JSONDecoder()
        with trio.fail_after(30):
            proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            try:

                async def read_until(n: int) -> None:
                    nonlocal buf
                    while len(events) < n:
                        chunk = await proc.stdout.receive_some(65536)  # type: ignore[union-attr]
                        assert chunk, f"kubectl ended early after {events}"
                        buf += chunk.decode()
                        while buf.strip():
                            try:
                                obj, end = decoder.raw_decode(buf.lstrip())
                            except ValueError:
                                break
                            events.append(obj)
                            buf = buf.lstrip()[end:]

                await read_until(4)  # the list, shown as ADDED
                while not api.watchers:  # noqa: ASYNC110 -- kubectl is another process
                    await trio.sleep(0.01)
                api.modify("endpointslices", endpoint_slice("bd-0", "bdgreeter", []))
                api.delete("endpointslices", "db-0", namespace="prod")
                await read_until(6)
                api.end_watches()
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
        summary = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
        assert summary == [
            ("ADDED", "bd-0"), ("ADDED", "bd-1"), ("ADDED", "bd-2"), ("ADDED", "db-0"),
            ("MODIFIED", "bd-0"), ("DELETED", "db-0"),
        ]  # fmt: skip
        watch = next(t for t, _ in api.requests if "watch=true" in t)
        assert f"resourceVersion={listed_at}" in watch  # kubectl watched from its list
