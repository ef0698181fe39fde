"""The gateway's side of a telemetry child fed on its stdin (span exporter, decision-log writer): pipe size, stop.

Both children read marshalled frames until EOF and report on their stdout; ending one is the same for
both: close its stdin, give it `timeout_s` to finish what it holds, then kill it, and let the task
reading its reports see the last of them. Both settle their heap when they start (`settle_heap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
from typing import Any

CHILD_GC_YOUNG_THRESHOLD = 50_000  # as the gateway's (serve.GC_YOUNG_THRESHOLD)
PIPE_BYTES = 1 << 20  # the child's stdin pipe (Linux's default most an unprivileged process may ask for)


def widen_pipe(proc: asyncio.subprocess.Process) -> None:
    """Let the child's stdin pipe hold a whole frame (Linux; elsewhere the pipe keeps its size).

    A frame larger than what the pipe holds (64 KiB by default) waits in the transport's buffer, which the
    event loop then writes a pipe's worth at a time, moving the rest of the buffer to its front after each
    write: with the child a few frames behind, that copying cost ~2 % of a traced gateway's CPU."""
    transport = proc.stdin.transport if proc.stdin is not None else None
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if pipe is None or setter is None:
        return
    with contextlib.suppress(OSError):  # past /proc/sys/fs/pipe-max-size, or not a pipe: keep the default
        fcntl.fcntl(pipe.fileno(), setter, PIPE_BYTES)


async def stop_child(proc: asyncio.subprocess.Process, reader: asyncio.Task[Any] | None, timeout_s: float) -> bool:
    """End of input; the child gets `timeout_s` to finish, then is killed. False when it had to be killed."""
    with contextlib.suppress(ConnectionError, OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    finished = True
    try:
        async with asyncio.timeout(timeout_s):
            await proc.wait()
    except TimeoutError:
        finished = False
        proc.kill()
        await proc.wait()
    if reader is not None:  # its last reports (the pipe ends with the child)
        await asyncio.gather(reader, return_exceptions=True)
    return finished


def settle_heap() -> None:
    """In a child, once its imports are done: what they allocated out of the collector's reach (gc.freeze), and
    young collections only past CHILD_GC_YOUNG_THRESHOLD allocations. A batch unmarshals thousands of tuples and
    dicts, all freed by reference counting; at CPython's default (700) they set off collections that found
    nothing and walked the modules' objects at every full pass: ~1 µs of the span exporter's ~33 a call."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(CHILD_GC_YOUNG_THRESHOLD, second, third)
