"""Log lines stay whole when a supervisor and its workers share one stdout pipe.

The access log writes up to 64 lines at once; a pipe keeps a write whole only
up to PIPE_BUF bytes, so two workers' batches interleaved mid-line once the
pipe filled up. Here the reader is slow on purpose (the pipe stays nearly
full, as behind a busy log shipper) and every line must still parse.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import trio

from tests.helpers.backends import ask, backend

SENT = 1200


async def test_log_lines_stay_whole_when_workers_share_a_pipe(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = tmp_path / "np.yaml"
        config.write_text(
            "workers: 2\n"
            "listeners:\n  - name: outbound\n    address: 127.0.0.1:0\n"
            "admin:\n  address: 127.0.0.1:0\n"
            "log:\n  format: json\n"
            "services:\n  - name: svc\n    endpoints:\n"
            f"      - address: 127.0.0.1:{upstream.port}\n"
        )
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "nodeproxy", "run", "--config", str(config)],
            stdout=-1,  # subprocess.PIPE
            stdin=-3,  # subprocess.DEVNULL
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        stdout = process.stdout
        assert stdout is not None
        out = bytearray()
        try:
            port = 0
            with trio.fail_after(30):
                while not port:
                    out += await stdout.receive_some(65536)
                    for line in bytes(out).split(b"\n"):
                        if b'"event": "started"' in line:
                            address = json.loads(line)["listeners"]["outbound"]
                            port = int(address.rsplit(":", 1)[1])
            async with trio.open_nursery() as nursery:

                async def slow_reader() -> None:
                    while chunk := await stdout.receive_some(512):
                        out.extend(chunk)
                        await trio.sleep(0.0005)  # a slow log shipper: the pipe stays full

                nursery.start_soon(slow_reader)
                async with trio.open_nursery() as clients:
                    for _ in range(8):

                        async def client() -> None:
                            for _ in range(SENT // 8):
                                assert (await ask(port, b"GET", b"/x", b"svc"))[0] == 200

                        clients.start_soon(client)
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    broken: list[bytes] = []
    access = 0
    for line in bytes(out).splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            broken.append(line[:120])
            continue
        access += doc.get("event") == "access"
    assert broken == []
    assert access == SENT
