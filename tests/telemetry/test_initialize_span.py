"""The agent's `initialize` SERVER span carries `mcp.session.id` only when that initialize made a session.

The gateway makes the MCP session while answering `initialize`, so the span of an initialize it answered names
the `Mcp-Session-Id` the agent was given, as every later request's span does. An initialize that failed (a
pass-through view whose upstream cannot be reached) ends the session it began and hands the agent no id: its
span names none. Real gateway, real SDK upstream, real OTLP receiver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway, free_port
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "0"}}}


def gateway_config(otlp: OtlpReceiver, url: str, policies: Path) -> dict[str, Any]:
    return {"upstreams": [{"name": "inventory", "url": url, "timeout_s": 5}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(policies)}, "telemetry": {"traces": {"endpoint": otlp.url}}}


async def initialize(url: str) -> tuple[dict[str, Any], str | None]:
    """The JSON-RPC answer to an initialize, and the session id it came with."""
    async with aiohttp.ClientSession() as http, http.post(url, json=INITIALIZE, headers=HEADERS) as resp:
        return await resp.json(), resp.headers.get("Mcp-Session-Id")


async def initialize_span(otlp: OtlpReceiver, session_id: str | None) -> ReceivedSpan:
    return await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "initialize"
                                    and s.attributes.get("mcp.session.id") == session_id)


async def test_an_answered_initialize_names_the_session_it_made(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                               permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway(gateway_config(otlp, url, permissive_policies))
        given = [await initialize(gateway.mcp), await initialize(f"{gateway.mcp}/inventory")]
        await gateway.gateway.parts.observability.telemetry.flush()
    assert all("result" in answer and session for answer, session in given), given
    for _, session_id in given:
        span = await initialize_span(otlp, session_id)
        assert span.status != "ERROR", span


async def test_a_failed_initialize_names_no_session(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                   permissive_policies: Path) -> None:
    # The pass-through view opens its upstream while answering initialize; nothing listens at that URL, so the
    # initialize fails and its session is ended (on the old code the span still named that session).
    gateway = await start_gateway(gateway_config(otlp, f"http://127.0.0.1:{free_port()}/mcp", permissive_policies))
    answer, session = await initialize(f"{gateway.mcp}/inventory")
    assert answer["error"]["data"]["reason"] == "upstream_unavailable" and session is None, answer
    await gateway.gateway.parts.observability.telemetry.flush()
    span = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "initialize")
    assert span.status == "ERROR" and span.attributes["error.type"] == "upstream_unavailable", span
    assert "mcp.session.id" not in span.attributes, span.attributes
