"""Tracing changes nothing an agent is sent but the trace context in `params._meta` (issue 6).

An upstream's notification whose `params` is not an object is malformed (MCP params are objects) and the gateway
drops it (gateway/server_messages.py). With tracing on, UpstreamNotices put the context into the notification first,
replacing such `params` with `{"_meta": {...}}`: the upstream's params were lost and the now well-formed notification
reached the agent, where tracing off dropped it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import RunningGateway
from tests.support.otlp import OtlpReceiver
from tests.support.servers import scripted_upstream

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}
NOTIFICATIONS = [
    {"jsonrpc": "2.0", "method": "notifications/message", "params": ["info", "an array"]},
    {"jsonrpc": "2.0", "method": "notifications/message", "params": "a string"},
    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "well-formed"}},
]


def result_of(message: dict[str, Any]) -> Any:
    if message["method"] == "tools/list":
        return {"tools": [{"name": "chatty", "inputSchema": {"type": "object"}}]}
    return {"content": [{"type": "text", "text": "done"}]}


def with_notifications(answer: dict[str, Any]) -> web.Response:
    """tools/call is answered on an SSE stream, the notifications first."""
    if "tools" in answer.get("result", {}):
        return web.json_response(answer)
    events = [*NOTIFICATIONS, answer]
    return web.Response(body="".join(f"event: message\ndata: {json.dumps(e)}\n\n" for e in events),
                        content_type="text/event-stream")


async def delivered(start_gateway: StartGateway, permissive_policies: Path, telemetry: dict[str, Any]) -> list[Any]:
    """The notifications the agent got during one call, their trace context taken out of `_meta`."""
    async with scripted_upstream(result_of, encode=with_notifications) as url:
        gateway = await start_gateway({"upstreams": [{"name": "s", "url": url}], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)}, "telemetry": telemetry})
        endpoint = f"{gateway.mcp}/s"
        async with aiohttp.ClientSession() as http:
            initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
            async with http.post(endpoint, json=initialize, headers=HEADERS) as resp:
                session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
            async with http.post(endpoint, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                 headers=session) as resp:
                assert resp.status == 202
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "chatty", "arguments": {}}}
            async with http.post(endpoint, json=call, headers=session) as resp:
                text = await resp.text()
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert events[-1]["result"]["content"][0]["text"] == "done", events
    notes = []
    for event in events[:-1]:
        params = event.get("params")
        if isinstance(params, dict) and isinstance(params.get("_meta"), dict):
            meta = {k: v for k, v in params["_meta"].items() if k not in ("traceparent", "tracestate")}
            params = {**{k: v for k, v in params.items() if k != "_meta"}, **({"_meta": meta} if meta else {})}
            event = {**event, "params": params}
        notes.append(event)
    return notes


async def test_tracing_on_delivers_what_tracing_off_does(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                         permissive_policies: Path) -> None:
    untraced = await delivered(start_gateway, permissive_policies, {})
    traced = await delivered(start_gateway, permissive_policies, {"traces": {"endpoint": otlp.url}})
    assert untraced == [NOTIFICATIONS[2]], untraced  # the malformed ones are dropped
    assert traced == untraced, traced
