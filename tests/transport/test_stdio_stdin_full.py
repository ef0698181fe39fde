"""A stdio child that stopped reading its stdin (busy in a blocking computation, wedged): once the pipe was
full, the write of a large request blocked, and after the call's timeout the gateway's own
`notifications/cancelled` blocked behind it for good, so the call never ended (its timeout passed, no error
came) and every later call and notification of every session waited on the same lock. Writes to the child
are now bounded: the call ends with upstream_timeout at its timeout, the others at theirs, and the fence
restarts the wedged child (real child processes)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Message
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import eventually

DEAF = """
import json, sys, time
msg = json.loads(sys.stdin.readline())
print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-06-18",
      "capabilities": {"tools": {}}, "serverInfo": {"name": "deaf", "version": "1"}}}), flush=True)
sys.stdin.readline()  # notifications/initialized; then it reads nothing more
time.sleep(3600)
"""


async def ignore(message: Message) -> None:
    return None


def call(request_id: int, size: int) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "work", "arguments": {"blob": "x" * size}}}


async def test_a_child_that_stopped_reading_never_hangs_a_call(tmp_path: Path) -> None:
    script = tmp_path / "deaf.py"
    script.write_text(DEAF)
    upstream = StdioUpstream(UpstreamConfig(name="deaf", command=(sys.executable, str(script)), timeout_s=1),
                             grace_s=0.5)
    await upstream.start()
    try:
        session = await upstream.connect(ConnectParams(), ignore)
        loop = asyncio.get_running_loop()
        began = loop.time()
        # (on the old code: this call never ended; wait_for only keeps the test from hanging)
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(session.request(call(1, 1_000_000)), 15)
        assert info.value.reason == "upstream_timeout" and loop.time() - began < 5
        began = loop.time()
        with pytest.raises(GatewayError) as info:  # another call: ended at its own timeout, not stuck behind it
            await asyncio.wait_for(session.request(call(2, 10)), 15)
        assert info.value.reason in ("upstream_timeout", "upstream_unavailable") and loop.time() - began < 5
        with pytest.raises(GatewayError):  # a notification too
            await asyncio.wait_for(session.notify({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
                                   15)
        await eventually(lambda: upstream.health().restarts >= 1, within=20)  # the fence found it stuck
    finally:
        await upstream.stop()
