"""A CLIENT span's `jsonrpc.request.id` is the id the gateway sent upstream, not the agent's (issue 6).

The gateway gives every upstream request an id of its own (sessions share an upstream connection, so
agents' ids would collide). The OpenTelemetry MCP conventions describe the CLIENT span as the request
the client sent, so its id is the one the upstream received; the SERVER span keeps the agent's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.telemetry.meta_echo_server import META_ECHO_SERVER_PATH

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


async def test_client_spans_carry_the_id_sent_upstream(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    gateway = await start_gateway({
        "upstreams": [{"name": "echo", "command": [sys.executable, META_ECHO_SERVER_PATH]}],
        "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
        "policies": {"dir": str(permissive_policies)},
        "telemetry": {"traces": {"endpoint": otlp.url}},
    })
    async with sdk_client(gateway.mcp) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for _ in range(5):  # refused by the gateway itself: the agent's ids move on, the child's do not
            with pytest.raises(MCPError):
                await client.call_tool("echo__no_such_tool", {})
        result = await client.call_tool("echo__seen_id", {})
    await gateway.gateway.parts.observability.telemetry.flush()
    listed_as = json.loads(tools["echo__seen_id"].description or "null")
    called_as = json.loads(result.content[0].text)  # type: ignore[union-attr]

    call = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call echo__seen_id")
    [to_child] = await otlp.wait_for(lambda r: [s for s in r.children(call) if s.kind == "CLIENT"])
    assert to_child.attributes["jsonrpc.request.id"] == str(called_as)
    assert call.attributes["jsonrpc.request.id"] != str(called_as)  # the agent's id: not what the child saw

    # The router's own requests (a tools/list fanned out to upstreams) are described the same way.
    listing = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/list")
    [list_child] = await otlp.wait_for(lambda r: [s for s in r.children(listing) if s.kind == "CLIENT"])
    assert list_child.attributes["jsonrpc.request.id"] == str(listed_as)
