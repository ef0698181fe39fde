"""Stateless (2026-07-28) clients and change notifications: that revision delivers them only on
`subscriptions/listen` streams, which the gateway does not serve, so `server/discover` promises no
`listChanged` or `subscribe`, and the handshake revisions' `resources/subscribe|unsubscribe` (removed
in 2026-07-28) are `method_not_found` instead of a subscription at the upstream whose updates would
reach nobody, as is `ping` (removed too) (real gateway, real stdio SDK server, raw HTTP and the SDK's
own stateless client)."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.support.mcp_client import sdk_client
from tests.transport.watch_server import WATCH_SERVER_PATH

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture
async def watch_url(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[str]:
    gw = await start_gateway({
        "upstreams": [{"name": "watch", "command": [sys.executable, WATCH_SERVER_PATH], "timeout_s": 30}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    yield f"{gw.mcp}/watch"


async def stateless(url: str, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, **({"Mcp-Name": name} if name else {})}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=headers) as resp:
        reply: dict[str, Any] = json.loads(await resp.text())
        return reply


async def test_discover_promises_no_change_notifications(watch_url: str) -> None:
    caps = (await stateless(watch_url, "server/discover", {}))["result"]["capabilities"]
    assert not caps["tools"].get("listChanged") and not caps["prompts"].get("listChanged")
    assert not caps["resources"].get("listChanged") and not caps["resources"].get("subscribe")
    async with sdk_client(watch_url, mode="auto") as client:  # the SDK client discovers, then goes stateless
        assert client.protocol_version == "2026-07-28"
        seen = client.server_capabilities
        assert seen.resources is not None and not seen.resources.subscribe and not seen.resources.list_changed
        assert seen.tools is not None and not seen.tools.list_changed


@pytest.mark.parametrize("method", ["resources/subscribe", "resources/unsubscribe"])
async def test_removed_subscribe_methods_reach_no_upstream(watch_url: str, method: str) -> None:
    reply = await stateless(watch_url, method, {"uri": "watch://a"})
    assert reply["error"]["code"] == -32601 and reply["error"]["data"]["reason"] == "method_not_found", reply
    touched = await stateless(watch_url, "tools/call", {"name": "touch", "arguments": {"uri": "watch://a"}}, "touch")
    assert touched["result"]["content"][0]["text"] == "not subscribed"


async def test_ping_removed_in_the_stateless_revision_is_method_not_found(watch_url: str) -> None:
    # 2026-07-28 removed `ping` (no connection to keep alive; the SDK's server has no such method at that
    # revision and its client refuses to send one): the gateway answered `{}` as for a handshake session.
    async with aiohttp.ClientSession() as http:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "ping"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": META}}
        async with http.post(watch_url, data=json.dumps(body), headers=headers) as resp:
            reply = json.loads(await resp.text())
            assert resp.status == 404, reply  # that revision's transport status for -32601
    assert reply["error"]["code"] == -32601 and reply["error"]["data"]["reason"] == "method_not_found", reply
    async with sdk_client(watch_url) as client:  # a handshake session still gets its ping answered
        with warnings.catch_warnings():  # the SDK warns that ping is gone in 2026-07-28, not in this revision
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.send_ping()


async def test_set_level_removed_in_the_stateless_revision_reaches_no_upstream(watch_url: str) -> None:
    # 2026-07-28 removed `logging/setLevel` (a request opts in with `_meta` `io.modelcontextprotocol/logLevel`):
    # set on the implicit session every stateless client of the principal shares, it changed what all of them got.
    async with aiohttp.ClientSession() as http:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "logging/setLevel"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug", "_meta": META}}
        # The aggregated endpoint: there an upstream's refusal is not the answer, so only the gateway can refuse.
        aggregated = watch_url.removesuffix("/watch")
        async with http.post(aggregated, data=json.dumps(body), headers=headers) as resp:
            reply = json.loads(await resp.text())
            assert resp.status == 404, reply
    assert reply["error"]["code"] == -32601 and reply["error"]["data"]["reason"] == "method_not_found", reply
    async with sdk_client(aggregated) as client:  # a handshake session still sets its level
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.set_logging_level("debug")
