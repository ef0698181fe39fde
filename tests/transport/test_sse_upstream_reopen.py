"""A legacy SSE upstream that went away and came back: every call on a gateway session that had used it
failed with upstream_unavailable for as long as that session lived (its upstream stream had ended), while
/readyz said the upstream was ready again and a new session worked. As for a streamable HTTP upstream whose
session expired, the next call now opens a fresh upstream session (a new stream and `initialize`); calls
in flight when the stream ended still fail at once (real SDK SSE server restarted on its port, real gateway
and SDK client)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import ToolListChangedNotification

from gateway.demo.servers import inventory_server
from tests.conftest import bound_socket
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_sse_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.parametrize("path", ["", "/inventory"])
async def test_the_next_call_after_an_sse_upstream_came_back_reopens_its_session(
        start_gateway: Any, permissive_policies: Path, path: str) -> None:
    first = bound_socket(0)
    port = first.getsockname()[1]
    tool = "get_stock" if path else "inventory__get_stock"
    upstream = run_sse_server(inventory_server(), sock=first)
    url = await upstream.__aenter__()
    try:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url, "transport": "sse",
                                                 "timeout_s": 10}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        changed: list[object] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, ToolListChangedNotification):
                changed.append(message)

        async with sdk_client(f"{gw.mcp}{path}", message_handler=on_message) as client:
            assert text_of(await client.call_tool(tool, {"sku": "widget"})) == "widget: 42 in stock"
            await upstream.__aexit__(None, None, None)
            upstream = None
            with pytest.raises(MCPError) as info:  # the upstream is down: an error at once, never a hang
                await asyncio.wait_for(client.call_tool(tool, {"sku": "widget"}), 20)
            assert info.value.error.data["reason"] == "upstream_unavailable"
            upstream = run_sse_server(inventory_server(), sock=bound_socket(port))
            await upstream.__aenter__()
            # (on the old code: upstream_unavailable, "upstream SSE stream is closed", for the session's life)
            result = await asyncio.wait_for(client.call_tool(tool, {"sku": "gadget"}), 20)
            assert text_of(result) == "gadget: 7 in stock"
            # As after a streamable HTTP session's expiry: the restarted upstream's tools are stale, listed again.
            await eventually(lambda: len(changed) == 1, within=10)
            assert text_of(await client.call_tool(tool, {"sku": "widget"})) == "widget: 42 in stock"
    finally:
        if upstream is not None:
            await upstream.__aexit__(None, None, None)
