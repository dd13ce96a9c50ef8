"""Keeping a long-lived service's resident memory at what it uses (issue 14 item 5).

Measured on the lab's services (bench ``memory``): memory a service frees — import-time
garbage, a run report rendered in a worker thread, a snapshot's rows — stayed resident, because
glibc's malloc keeps freed pages for reuse and gives each thread that allocates its own arena
(the DAQ grew from 41 to 51 MiB over two runs, all of it in a thread arena that ``asyncio
.to_thread`` had used once).  Two glibc knobs address exactly that:

* :func:`limit_arenas` — at most two malloc arenas (``M_ARENA_MAX``; the ``MALLOC_ARENA_MAX``
  environment variable does the same), set by ``dl-serve`` before any thread exists, so that a
  worker thread reuses an arena instead of keeping a fresh one resident;
* :func:`release_free_memory` — ``malloc_trim(0)``: give free pages of every arena back to the
  system, after start-up and after the rare large one-off jobs (end of a run, a snapshot).

Both are no-ops where the C library is not glibc.  Costs: a trim takes well under a
millisecond on these heaps and runs a few times per run, never per message.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENAS = 2


@functools.cache
def _libc() -> Any:
    """glibc, or ``None`` (musl, macOS …: nothing to tune)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
            return libc
    return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); ``True`` if it took effect."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def release_free_memory() -> bool:
    """Return free heap pages to the system; ``True`` if any were released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)


_scheduled: Any = None  # the pending call_later handle, if any
_awaited: Any = None  # WeakSet of the tasks whose end will trigger a trim


def _trim() -> None:
    import gc

    gc.collect()  # a large job's reference cycles (exception tracebacks, frames) go too
    release_free_memory()


def _fresh_context() -> Any:
    """An empty context for the trim's callbacks.

    A callback scheduled from a request handler runs in a *copy* of the handler's context,
    which holds ``endpoint.current_request``: a trim scheduled that way kept the very request
    it was meant to release (the DAQ stayed at 120-160 MiB after a 360 000-value write_json,
    46 MiB once the request was really gone).
    """
    import contextvars

    return contextvars.Context()


def _after_task(task: Any) -> None:
    """The task that asked for a trim has ended: its frames, and the request they held, are
    released; trim on the loop's next turn."""
    task.get_loop().call_soon(_trim, context=_fresh_context())


def release_soon(delay_s: float = 0.1) -> None:
    """Trim after a large one-off job, once the request and its reply are gone.

    The request (e.g. a write_json carrying a 360 000-value snapshot, ~150 MB as Python
    objects) is referenced until the task handling it ends, after the reply is sent; so a
    trim runs when the calling task ends, and one after ``delay_s`` (for work done in a
    long-lived task; several calls in a row make one).  Every callback runs in an empty
    context (:func:`_fresh_context`).
    """
    global _scheduled, _awaited  # noqa: PLW0603 - one pending trim per process, by design
    import asyncio
    import weakref

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _trim()
        return
    task = asyncio.current_task()
    if task is not None:
        if _awaited is None:
            _awaited = weakref.WeakSet()
        if task not in _awaited:
            _awaited.add(task)
            task.add_done_callback(_after_task, context=_fresh_context())
    if _scheduled is not None and not _scheduled.cancelled():
        return

    def run() -> None:
        global _scheduled  # noqa: PLW0603
        _scheduled = None
        _trim()

    _scheduled = loop.call_later(delay_s, run, context=_fresh_context())
