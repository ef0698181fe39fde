"""A stdio child that closes its stdout but keeps running (a server that redirected or closed fd 1, a wrapper
whose child died while it lives on): the supervisor waited for its exit without limit, so it was never
restarted: `/readyz` said `ok` though not ready, restarts stayed 0, and every call waited its whole timeout
for a child that could never answer. A child without stdout is now stopped after the grace period and
restarted like a crashed one (real child processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Message
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import eventually

CLOSER = """
import json, os, sys, time
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-06-18",
              "capabilities": {"tools": {}}, "serverInfo": {"name": "closer", "version": "1"}}}), flush=True)
    elif msg.get("method") == "tools/list":
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": []}}), flush=True)
    elif msg.get("method") == "tools/call":
        os.close(1)  # stdout gone, the process lives on
        time.sleep(3600)
"""


async def ignore(message: Message) -> None:
    return None


async def test_a_child_that_closed_its_stdout_is_stopped_and_restarted(tmp_path: Path) -> None:
    script = tmp_path / "closer.py"
    script.write_text(CLOSER)
    upstream = StdioUpstream(UpstreamConfig(name="closer", command=(sys.executable, str(script)), timeout_s=20),
                             grace_s=0.5)
    await upstream.start()
    try:
        session = await upstream.connect(ConnectParams(), ignore)
        first = upstream.pid
        try:
            await session.request({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                   "params": {"name": "x", "arguments": {}}})
            raise AssertionError("the call was answered")
        except GatewayError as exc:
            assert exc.reason == "upstream_unavailable"  # at once: its stdout closed
        # (on the old code: restarts stayed 0, health 'ok' but not ready, every call waited 20 s)
        await eventually(lambda: upstream.health().restarts == 1 and upstream.health().ready, within=15)
        assert upstream.pid not in (None, first)
        answer = await session.request({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, timeout=5)
        assert answer["result"] == {"tools": []}
    finally:
        await upstream.stop()


async def test_readiness_names_the_closed_stdout_while_the_child_is_waited_for(tmp_path: Path) -> None:
    """Between its stdout closing and its exit (the grace period, for one that lives on), the child is not ready:
    /readyz said so with the detail "ok", a reason that contradicts the verdict."""
    script = tmp_path / "closer.py"
    script.write_text(CLOSER)
    upstream = StdioUpstream(UpstreamConfig(name="closer", command=(sys.executable, str(script)), timeout_s=20),
                             grace_s=3)  # the child lives on: the supervisor waits all of it for its exit
    await upstream.start()
    try:
        session = await upstream.connect(ConnectParams(), ignore)
        assert upstream.health().detail == "ok"
        try:
            await session.request({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                   "params": {"name": "x", "arguments": {}}})
            raise AssertionError("the call was answered")
        except GatewayError as exc:
            assert exc.reason == "upstream_unavailable"
        health = upstream.health()
        assert not health.ready
        assert health.detail == "child closed its stdout", health
    finally:
        await upstream.stop()
