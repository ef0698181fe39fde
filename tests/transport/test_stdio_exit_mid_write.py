"""A stdio child that exits while the gateway writes a large request to it (a real child process).

docs/security.md "Faults" promises that a stdio upstream dying mid-call answers the caller `upstream_unavailable` at
once (never a hang until the call's timeout), that the supervisor starts the child again and the next call works. A
child that dies *while the gateway is still writing* the request (a request of megabytes, far past the pipe's buffer,
so the write is blocked on the child reading) is that fault at its most awkward moment: the write fails with a broken
pipe instead of the read side seeing EOF.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually, text_of

CHILD = str(Path(__file__).with_name("stdio_exit_mid_write_child.py"))
BIG = "x" * (4 * 1024 * 1024)  # 64 times a Linux pipe's buffer: the write blocks until the child reads


async def test_a_child_exiting_mid_write_of_a_large_request_answers_at_once_and_serves_again(tmp_path: Path) -> None:
    """The large call is answered `upstream_unavailable` well within its 20 s timeout, and so is a small call queued
    behind its blocked write (or, never having reached the dead child, it is answered by the new one); the restarted
    child answers the same large call in full."""
    mark = tmp_path / "exited"
    upstream = StdioUpstream(UpstreamConfig(name="big", command=(sys.executable, CHILD, str(mark)), timeout_s=20),
                             restart_cap_s=0.05)
    await upstream.start()
    try:
        await eventually(lambda: upstream.health().ready, within=30)
        view = await upstream.connect(CLIENT_CAPS, Inbox())
        first_pid = upstream.pid
        loop = asyncio.get_running_loop()
        started = loop.time()
        big = asyncio.create_task(view.request(call("big", {"blob": BIG}, request_id=1)))
        await eventually(mark.exists, within=15)  # the child saw the call's first bytes and exited
        small = asyncio.create_task(view.request(call("echo", request_id=3)))  # queued behind the blocked write
        results = await asyncio.wait_for(asyncio.gather(big, small, return_exceptions=True), 15)
        assert isinstance(results[0], GatewayError) and results[0].reason == "upstream_unavailable", results
        # The small call never reached the dead child: failed with it, or written to the new one and answered once.
        assert ((isinstance(results[1], GatewayError) and results[1].reason == "upstream_unavailable")
                or text_of(results[1]).startswith("echo ")), results  # type: ignore[arg-type]
        assert loop.time() - started < 10, "answered only at (or near) the call's timeout"
        assert mark.exists()
        await eventually(lambda: upstream.pid not in (None, first_pid) and upstream.health().ready, within=30)
        again = await asyncio.wait_for(view.request(call("big", {"blob": BIG}, request_id=2)), 20)
        assert text_of(again).startswith("big "), again
    finally:
        await upstream.stop()
