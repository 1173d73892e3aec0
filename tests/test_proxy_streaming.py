"""200 MB up and 200 MB down through the proxy, with the proxy's memory bounded.

The proxy and the backend run in this process; curl runs outside it and
streams from/to pipes. The process's peak RSS (``ru_maxrss``, a high-water
mark the kernel keeps for us, so no sampling can miss a spike) may not grow by
anything near the body size: buffering a body whole, in the proxy or the test
backend, would add at least 200 MB.
"""

from __future__ import annotations

import hashlib
import os
import resource

import pytest
import trio

from tests.helpers.backends import backend, run_proxy, simple_config

SIZE = 200 * 1024 * 1024
MAX_GROWTH_KB = 64 * 1024  # 64 MB: generous for allocator noise, far below one body
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def zeros_sha256(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size // len(block)):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
async def test_200mb_chunked_upload_streams_with_bounded_memory() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        before = peak_rss_kb()
        script = (
            f"head -c {SIZE} /dev/zero | curl -sS --fail -x {p.url} -T - -X POST "
            f"-H 'Content-Type: application/octet-stream' http://svc/upload"
        )
        proc = await trio.run_process(
            ["sh", "-c", script], capture_stdout=True, capture_stderr=True, env=CLEAN_ENV
        )
        growth = peak_rss_kb() - before
    assert b'"body_bytes": %d' % SIZE in proc.stdout
    assert zeros_sha256(SIZE).encode() in proc.stdout
    assert growth < MAX_GROWTH_KB, f"peak RSS grew by {growth} kB"
    assert (b"transfer-encoding", b"chunked") in list(b.requests[-1].headers)


@pytest.mark.slow
@pytest.mark.parametrize("query", ["", "&chunked=1"])
async def test_200mb_download_streams_with_bounded_memory(query: str) -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        before = peak_rss_kb()
        proc = await trio.run_process(
            [
                "curl",
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "-x",
                p.url,
                f"http://svc/download?size={SIZE}{query}",
            ],
            capture_stdout=True,
            capture_stderr=True,
            env=CLEAN_ENV,
        )
        growth = peak_rss_kb() - before
    assert proc.stdout == str(SIZE).encode()
    assert growth < MAX_GROWTH_KB, f"peak RSS grew by {growth} kB"
