"""Resource subscriptions across an upstream restart: the gateway session outlives the upstream's (a
streamable HTTP upstream that forgot the session, a legacy SSE one whose stream ended), and re-opens it
on the next call, but the subscriptions the agent had made were held by the old upstream session only:
the agent, whose own session never ended, silently got no more `notifications/resources/updated`. The
re-opened session now subscribes again to every URI the old one held (real SDK servers restarted on their
port, real gateway and SDK client)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import bound_socket
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server, run_sse_server
from tests.transport.conftest import eventually
from tests.transport.watch_server import watch_server

pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


def serve(kind: str, sock: socket.socket) -> Any:
    return (run_http_server if kind == "streamable_http" else run_sse_server)(watch_server(), sock=sock)


async def touch(client: Any, uri: str) -> str:
    content = (await client.call_tool("touch", {"uri": uri})).content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("kind", ["streamable_http", "sse"])
async def test_subscriptions_are_held_again_after_the_upstream_came_back(
        start_gateway: Any, permissive_policies: Path, kind: str) -> None:
    first = bound_socket(0)
    port = first.getsockname()[1]
    upstream = serve(kind, first)
    url = await upstream.__aenter__()
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    try:
        gw = await start_gateway({"upstreams": [{"name": "watch", "url": url, "transport": kind, "timeout_s": 10}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        async with sdk_client(f"{gw.mcp}/watch", message_handler=on_message) as client:
            await client.subscribe_resource("watch://a")
            assert await touch(client, "watch://a") == "touched"
            await eventually(lambda: updates == ["watch://a"], within=10)
            await upstream.__aexit__(None, None, None)
            upstream = serve(kind, bound_socket(port))  # a new server: it knows no session, no subscription
            await upstream.__aenter__()
            for _ in range(2):  # streamable HTTP: the first call meets the expired session (upstream_unavailable)
                try:
                    answer = await asyncio.wait_for(touch(client, "watch://b"), 20)
                    break
                except MCPError as exc:
                    assert exc.error.data["reason"] == "upstream_unavailable"
            assert answer == "not subscribed"  # the new upstream session is open
            # The re-subscription goes in the background: poll until the new server holds it.
            # (on the old code: "not subscribed" for good, and no update ever again)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while await touch(client, "watch://a") != "touched":
                assert loop.time() < deadline, "watch://a was not subscribed again"
                await asyncio.sleep(0.05)  # polling the upstream's state, bounded by the deadline
            await eventually(lambda: updates == ["watch://a", "watch://a"], within=10)
    finally:
        await upstream.__aexit__(None, None, None)
