"""Stateless (2026-07-28) clients of one principal share the gateway's implicit session, and every SDK
client starts at the same request ids; a `notifications/cancelled` naming one of those ids must not
withdraw another client's call (that revision cancels by closing the call's stream; real SDK clients,
gateway and server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.feature_server import FeatureState, feature_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
MODERN = {"MCP-Protocol-Version": "2026-07-28", "Content-Type": "application/json",
          "Accept": "application/json, text/event-stream"}


@pytest.fixture
async def feat(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[tuple[str, FeatureState]]:
    server, state = feature_server()
    async with run_http_server(server) as url:
        gw = await start_gateway({"upstreams": [{"name": "feat", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies)}})
        yield f"{gw.mcp}/feat", state


async def test_a_cancel_for_a_shared_id_leaves_the_other_clients_call_running(
        feat: tuple[str, FeatureState]) -> None:
    url, state = feat
    call_ids: list[Any] = []

    async def record(request: httpx2.Request) -> None:
        body = json.loads(request.content or b"null")
        if isinstance(body, dict) and body.get("method") == "tools/call":
            call_ids.append(body["id"])

    async with httpx2.AsyncClient(event_hooks={"request": [record]}, timeout=30) as http, \
            Client(streamable_http_client(url, http_client=http), mode="auto") as a:
        first = asyncio.create_task(a.call_tool("overlap", {"tag": "A", "group": "g", "parties": 2}))
        await eventually(lambda: state.arrived.get("g") == 1)
        # Another stateless client of the same principal cancels its own call of that id (say, one it
        # gave up on just as it was answered).
        async with aiohttp.ClientSession() as raw:
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": call_ids[0], "reason": "mine, not yours"}}
            async with raw.post(url, json=cancel, headers=MODERN) as resp:
                assert resp.status == 202
        async with sdk_client(url, mode="auto") as b:
            second = await asyncio.wait_for(b.call_tool("overlap", {"tag": "B", "group": "g", "parties": 2}), 30)
        result = await asyncio.wait_for(first, 30)
    # (on the old code the cancel withdrew A's call: request_cancelled)
    assert not result.is_error, result
    assert [r.content[0].text for r in (result, second)] == ["A", "B"]  # type: ignore[union-attr]
