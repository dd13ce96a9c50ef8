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


@glibc
def test_release_soon_trims_when_the_calling_task_ends() -> None:
    """The request a handler holds is freed only when its task ends, after the handler asked
    for a trim, and the handler's context holds it too (``current_request``): the trim must
    follow the task's end and run outside that context, or it keeps what it should free."""
    code = (
        "import asyncio\n"
        "from insectarium.dripline import memory\n"
        "from insectarium.dripline.endpoint import current_request\n"
        "def rss():\n"
        "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
        "memory.limit_arenas()\n"
        "async def handler():\n"
        "    request = [bytearray(4096) for _ in range(20000)]  # ~80 MiB through malloc\n"
        "    token = current_request.set(request)  # as Endpoint.handle_request does\n"
        "    memory.release_soon(60)  # the timer alone would come far too late\n"
        "    await asyncio.sleep(0.3)  # still holding the request (e.g. sending the reply)\n"
        "    current_request.reset(token)\n"
        "    return request[-1]  # the heap's top block stays: no automatic trim at the top\n"
        "async def main():\n"
        "    keep = await asyncio.create_task(handler())\n"
        "    held = rss()\n"
        "    await asyncio.sleep(0.05)  # the trim runs on the loop right after the task\n"
        "    print(held - rss(), len(keep))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[0]) > 10_000, out.stdout  # kB handed back to the system
