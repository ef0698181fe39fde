"""Backpressure: a client that never reads its response stream stalls nobody else."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import RawClient, poll
from tests.support.flood_server import FLOOD_SERVER_PATH

pytestmark = pytest.mark.asyncio


def _never_reading_call(port: int, session_id: str, arguments: dict[str, Any]) -> socket.socket:
    """POST a tools/call that asks for progress on a raw socket with a tiny receive buffer, and never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "f__flood", "arguments": arguments,
                                  "_meta": {"progressToken": "p"}}}).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session_id}\r\n"
            f"MCP-Protocol-Version: 2025-11-25\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


@pytest.fixture
def hostile_sockets() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


async def test_a_client_that_never_reads_its_stream_does_not_stall_a_shared_stdio_upstream(
        spawn_gateway: Any, permissive_policies: Path, tmp_path: Path,
        hostile_sockets: list[socket.socket]) -> None:
    done = tmp_path / "flood-done"
    gw = await spawn_gateway({"upstreams": [{"name": "f", "command": [sys.executable, FLOOD_SERVER_PATH],
                                             "env": {"FLOOD_DONE_FILE": str(done)}, "timeout_s": 10}],
                              "identity": {"mode": "anonymous"},
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    port = int(gw.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        hostile, other = RawClient(http, gw.mcp), RawClient(http, gw.mcp)
        await hostile.initialize()
        await other.initialize()
        assert hostile.session_id is not None
        # 8 MB of progress for a client that reads none of it: far past every socket buffer on the way.
        hostile_sockets.append(_never_reading_call(port, hostile.session_id, {"count": 2000, "size": 4000}))
        # Once the child has sent it all, the gateway must still read what the child answers another session
        # (it used to wait on the hostile client's socket, so every session's call timed out).
        await poll(done.exists, timeout=30, what="the shared child to send every notification")
        status, _, body = await other.call("f__echo", {"value": "still served"}, request_id=2)
    assert status == 200 and body.get("result", {}).get("structuredContent") == {"result": "still served"}, body
