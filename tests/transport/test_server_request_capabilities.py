"""A server→client request the client never declared it could answer: a shared stdio child is initialized
once with the gateway's capabilities (sampling, elicitation: it relays them), so it samples or elicits for a
client that declared neither. The gateway passed the request on; a client without the capability need not
answer it (MCP: a server must not send it), so the tool waited for its whole timeout. It is now refused
upstream at once, as the SDK's own client refuses it (-32600, "… not supported"), `data.reason`
`client_unsupported` (real gateway, real stdio SDK server, raw client that answers nothing)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.feature_server import FEATURE_SERVER_PATH

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[Any]:
    yield await start_gateway({"upstreams": [{"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH],
                                              "timeout_s": 30}],
                               "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})


async def call_tool(gw: Any, capabilities: dict[str, Any], tool: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Handshake declaring `capabilities`, call `tool`, answer nothing; every message of the call's answer."""
    async with aiohttp.ClientSession() as http:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": capabilities,
                           "clientInfo": {"name": "mute", "version": "1"}}}
        async with http.post(gw.mcp, json=init, headers=ACCEPT) as resp:
            headers = {**ACCEPT, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": f"feat__{tool}", "arguments": args}}
        async with asyncio.timeout(20), http.post(gw.mcp, json=call, headers=headers) as resp:
            body = await resp.text()  # (on the old code: the sampling request, then nothing until the 30 s timeout)
    if body.startswith("{"):
        return [json.loads(body)]
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize(("tool", "args", "needs"), [("sample", {"prompt": "hi"}, "sampling"),
                                                    ("ask_name", {}, "elicitation")])
async def test_a_request_the_client_cannot_answer_is_refused_upstream(gw: Any, tool: str, args: dict[str, Any],
                                                                      needs: str) -> None:
    messages = await call_tool(gw, {"roots": {}}, tool, args)
    assert not [m for m in messages if "method" in m and "id" in m], messages  # no request reached the client
    answer = messages[-1]
    assert answer["id"] == 1, answer
    # The SDK server turns the refusal into the call's JSON-RPC error (its tool raised it).
    assert "not supported" in json.dumps(answer) and "client_unsupported" in json.dumps(answer), answer


async def test_a_client_with_the_capability_still_gets_the_request(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
                           "clientInfo": {"name": "able", "version": "1"}}}
        async with http.post(gw.mcp, json=init, headers=ACCEPT) as resp:
            headers = {**ACCEPT, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "feat__sample", "arguments": {"prompt": "hi"}}}
        async with asyncio.timeout(20), http.post(gw.mcp, json=call, headers=headers) as resp:
            async for line in resp.content:
                if line.startswith(b"data:"):
                    asked = json.loads(line[5:])
                    break
        assert asked["method"] == "sampling/createMessage"
        # The call, still waiting for that answer, is withdrawn: else the gateway's clean-up waits for it (5 s).
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        async with http.post(gw.mcp, json=cancel, headers=headers) as resp:
            assert resp.status == 202
