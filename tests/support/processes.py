"""Stopping the real processes tests start: SIGTERM, then SIGKILL if it has not exited within a grace period."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any


def stop(proc: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """Terminate `proc` and reap it; kill it when it has not exited `grace_s` after the SIGTERM."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def stop_async(proc: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """stop() from a test's event loop, which goes on serving meanwhile: a gateway shutting down still talks to the
    upstreams, webhook and OTLP receivers that loop runs (its sessions' DELETEs, its last span export). stop() there
    blocked the loop, so each of those waited, and the process with them, until its own timeout or the SIGKILL."""
    await asyncio.to_thread(stop, proc, grace_s)


async def seconds_to_exit_after_sigterm(proc: subprocess.Popen[Any], timeout_s: float = 60) -> float:
    """Send `proc` SIGTERM and wait (without blocking the test's loop) for it to exit: how long that took."""
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout_s)
    return time.monotonic() - signalled
