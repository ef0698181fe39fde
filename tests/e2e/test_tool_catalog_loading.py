"""Loading and re-verifying the tool catalog through the real gateway: no extra tools/list inside calls,
and no list fetched before a change installed over it."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp.server import Server

from gateway.pin_watch import PinWatcher
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def tool(name: str, *, destructive: bool = False) -> types.Tool:
    return types.Tool(name=name, description=f"{name} a service", input_schema={"type": "object"},
                      annotations=types.ToolAnnotations(destructive_hint=destructive))


@dataclass
class Upstream:
    """What the upstream serves, every tools/list it answered, and a gate that can hold lists back."""

    tools: dict[str, types.Tool] = field(default_factory=lambda: {"deploy": tool("deploy"),
                                                                  "mutate": tool("mutate")})
    lists: int = 0
    calls: list[str] = field(default_factory=list)
    hold: bool = False  # lists wait for `release` while set; `held` is set when one arrived
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def server(self) -> Server[Any]:
        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            self.lists += 1
            snapshot = list(self.tools.values())  # the list as it was when asked
            if self.hold:
                self.held.set()
                await self.release.wait()
            return types.ListToolsResult(tools=snapshot)

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            self.calls.append(params.name)
            if params.name == "mutate":  # the tool changes and the upstream says so
                self.tools["deploy"] = tool("deploy", destructive=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await ctx.session.send_tool_list_changed()
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"ran {params.name}")])

        return Server("infra", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def gateway(start_gateway: Any, tmp_path: Path, policies: Path, upstream: Upstream,
                  **credentials: Any) -> AsyncIterator[Any]:
    async with run_http_server(upstream.server()) as url:
        entry: dict[str, Any] = {"name": "infra", "url": url}
        if credentials:
            entry["credentials"] = credentials
        yield await start_gateway({
            "upstreams": [entry], "policies": {"dir": str(policies)},
            "signing": {"key_dir": str(tmp_path / "keys")},
            "pinning": {"verify_interval_s": 3600},  # passes are run by the tests, not the timer
        })


def watcher(gw: Any) -> PinWatcher:
    (found,) = [o for o in gw.gateway.owners if isinstance(o, PinWatcher)]
    return found


async def call(gw: Any, name: str) -> str:
    """One tools/call in a session of its own, over plain HTTP: an SDK client lists tools after a call
    (to validate its result), and only the gateway's own lists are counted here."""
    async with aiohttp.ClientSession(headers=ACCEPT) as http:
        async with http.post(gw.mcp, json=INIT) as resp:
            assert resp.status == 200, await resp.text()
            headers = {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
        async with http.post(gw.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                             headers=headers) as resp:
            assert resp.status == 202
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}
        async with http.post(gw.mcp, json=body, headers=headers) as resp:
            text = await resp.text()
    data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    answer = json.loads(data[-1] if data else text)
    if "error" in answer:
        return f"error: {answer['error']['message']}"
    return str(answer["result"]["content"][0]["text"])


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)  # polling gateway/upstream state, bounded by the deadline


async def test_a_watcher_pass_leaves_a_minted_upstreams_list_loaded(start_gateway: Any, tmp_path: Path,
                                                                     permissive_policies: Path) -> None:
    """The gateway cannot list a minted upstream itself; the pass must not push a re-list into calls."""
    upstream = Upstream()
    async with gateway(start_gateway, tmp_path, permissive_policies, upstream, mode="minted") as gw:
        assert await call(gw, "infra__deploy") == "ran deploy"
        assert upstream.lists == 1
        await watcher(gw).verify_all()
        results = await asyncio.gather(*(call(gw, "infra__deploy") for _ in range(10)))
        assert results == ["ran deploy"] * 10
        assert upstream.lists == 1


async def test_concurrent_calls_share_one_tools_list(start_gateway: Any, tmp_path: Path,
                                                     permissive_policies: Path) -> None:
    upstream = Upstream(hold=True)
    async with gateway(start_gateway, tmp_path, permissive_policies, upstream) as gw:
        calls = asyncio.gather(*(call(gw, "infra__deploy") for _ in range(10)))
        # Released only once the nine others wait for the first call's list (or, without sharing, list too).
        await until(lambda: upstream.lists > 1 or gw.gateway.catalog.waiting("infra") == 9)
        upstream.release.set()
        assert await calls == ["ran deploy"] * 10
        assert upstream.lists == 1


async def test_list_changed_during_a_watcher_pass_is_not_overwritten(start_gateway: Any, tmp_path: Path,
                                                                      permissive_policies: Path) -> None:
    upstream = Upstream()
    async with gateway(start_gateway, tmp_path, permissive_policies, upstream) as gw:
        async with sdk_client(gw.mcp) as client:
            assert "infra__deploy" in {t.name for t in (await client.list_tools()).tools}
        upstream.hold = True
        verifying = asyncio.create_task(watcher(gw).verify_all())
        await asyncio.wait_for(upstream.held.wait(), 10)  # the pass holds the list from before the change
        assert await call(gw, "infra__mutate") == "ran mutate"  # deploy turns destructive; list_changed
        upstream.hold = False
        upstream.release.set()
        await verifying
        # The stale list was not installed: the call re-lists, sees the changed tool and quarantines it.
        assert "Unknown tool" in await call(gw, "infra__deploy")
        assert upstream.calls == ["mutate"]
