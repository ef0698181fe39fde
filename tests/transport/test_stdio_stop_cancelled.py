"""StdioUpstream.stop() when the upstream's tasks were cancelled from outside (asyncio.run's teardown
cancels every task, asyncio's own ones too), with a real child process."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, eventually

STOP_WITHIN_S = 15  # only so that the old code fails instead of hanging the suite


def connecting_pipes() -> bool:
    """asyncio is between starting a child and connecting its pipes (create_subprocess_exec in progress)."""
    return any(getattr(t.get_coro(), "__name__", "") == "_connect_pipes" for t in asyncio.all_tasks())


def running(marker: str) -> bool:
    """A live (not zombie) process whose command line holds `marker`."""
    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (OSError, IndexError):
            continue
    return False


async def test_stop_ends_when_every_task_was_cancelled_while_the_child_was_being_started() -> None:
    marker = f"customs-test-{uuid.uuid4().hex}"
    upstream = StdioUpstream(UpstreamConfig(name="slow", timeout_s=30,
                                            command=(sys.executable, "-c", f"import time; time.sleep(60)  # {marker}")))
    await upstream.start()
    for _ in range(10_000):  # yield to the supervisor until asyncio is creating the child (no time passes)
        if connecting_pipes():
            break
        await asyncio.sleep(0)
    assert connecting_pipes()
    # What asyncio.run does when its main coroutine returns: cancel every other task at once. asyncio's own
    # pipe-connecting task goes too, and asyncio then waits forever for the exit of the child it killed.
    current = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not current:
            task.cancel()
    # stop() runs before the supervisor has taken its cancellation, as in a task's clean-up during that
    # teardown (policy schema --config hung so). On the old code it never returned, nor did the teardown.
    async with asyncio.timeout(STOP_WITHIN_S):
        await upstream.stop()
    assert upstream.health().detail == "stopped" and upstream.pid is None
    await eventually(lambda: not running(marker), within=STOP_WITHIN_S)  # the half-started child is gone
    try:
        await upstream.connect(CLIENT_CAPS, Inbox())
        raise AssertionError("a stopped upstream connected")
    except GatewayError as exc:
        assert exc.reason == "upstream_unavailable"
