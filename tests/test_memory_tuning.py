"""glibc memory knobs used by the services (dripline/memory.py): they take effect, and a trim
after a large job returns what the job freed."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys

import pytest

from insectarium.dripline import memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_arena_limit_and_trim_take_effect() -> None:
    code = (
        "from insectarium.dripline import memory\n"
        "def rss():\n"
        "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
        "assert memory.limit_arenas()\n"
        "blocks = [bytearray(4096) for _ in range(20000)]  # ~80 MiB through malloc\n"
        "keep = blocks[-1]\n"
        "del blocks\n"
        "before = rss()\n"
        "memory.release_free_memory()\n"
        "print(before - rss())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 10_000, out.stdout  # kB handed back to the system


async def test_release_soon_coalesces_and_runs() -> None:
    memory.release_soon(0.05)
    first = memory._scheduled
    memory.release_soon(0.05)
    assert first is not None and memory._scheduled is first  # one trim for a burst of jobs
    await asyncio.sleep(0.2)
    assert memory._scheduled is None
