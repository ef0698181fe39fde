"""The gateway as an MCP server: real SDK clients, real upstreams over every transport."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.sse import sse_client

from gateway.demo.servers import inventory_server, payments_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server, run_sse_server

pytestmark = pytest.mark.asyncio


def demo(name: str) -> list[str]:
    return [sys.executable, "-m", "gateway.demo.servers", name]


@pytest.fixture
async def http_upstreams() -> AsyncIterator[dict[str, str]]:
    async with run_http_server(inventory_server()) as inv, run_http_server(payments_server()) as pay:
        yield {"inventory": inv, "payments": pay}


def config(upstreams: list[dict[str, Any]], policies: Path, **extra: Any) -> dict[str, Any]:
    return {"upstreams": upstreams, "policies": {"dir": str(policies)}, **extra}


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_aggregated_view_over_streamable_http(start_gateway, http_upstreams, permissive_policies, mode):
    gw = await start_gateway(config([{"name": n, "url": u} for n, u in http_upstreams.items()],
                                    permissive_policies))
    async with sdk_client(gw.mcp, mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"inventory__get_stock", "inventory__set_stock", "payments__pay"} <= names
        result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
        assert text_of(result) == "widget: 42 in stock"
        paid = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 5})
        assert "paid 5" in text_of(paid)
        annotations = {t.name: t.annotations for t in (await client.list_tools()).tools}
        assert annotations["payments__pay"].destructive_hint is True


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_pass_through_view_keeps_names(start_gateway, http_upstreams, permissive_policies, mode):
    gw = await start_gateway(config([{"name": n, "url": u} for n, u in http_upstreams.items()],
                                    permissive_policies))
    async with sdk_client(f"{gw.mcp}/inventory", mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"get_stock", "list_skus", "set_stock", "executed_calls"}
        assert text_of(await client.call_tool("get_stock", {"sku": "gizmo"})) == "gizmo: 0 in stock"
        prompts = await client.list_prompts()
        assert [p.name for p in prompts.prompts] == ["restock"]
        prompt = await client.get_prompt("restock", {"sku": "widget"})
        assert "restock widget" in prompt.messages[0].content.text
        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["inventory://skus"]
        contents = await client.read_resource("inventory://skus")
        assert "widget" in contents.contents[0].text


async def test_unknown_tool_is_an_error_and_reaches_no_upstream(start_gateway, http_upstreams, permissive_policies):
    gw = await start_gateway(config([{"name": n, "url": u} for n, u in http_upstreams.items()],
                                    permissive_policies))
    async with sdk_client(gw.mcp) as client:
        with pytest.raises(Exception) as info:
            await client.call_tool("inventory__nope", {})
        assert "Unknown tool" in str(info.value)
        with pytest.raises(Exception) as info:
            await client.call_tool("nosuchprefix_tool", {})
        assert "Unknown tool" in str(info.value)


async def test_stdio_upstreams_including_third_party_server(start_gateway, permissive_policies):
    gw = await start_gateway(config([
        {"name": "inventory", "command": demo("inventory")},
        {"name": "time", "command": [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]},
    ], permissive_policies))
    async with sdk_client(gw.mcp) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "time__get_current_time" in names and "inventory__get_stock" in names
        result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert "UTC" in text_of(result)
        assert text_of(await client.call_tool("inventory__get_stock", {"sku": "widget"})) == "widget: 42 in stock"


async def test_sse_upstream(start_gateway, permissive_policies):
    async with run_sse_server(payments_server()) as sse_url:
        gw = await start_gateway(config([{"name": "payments", "url": sse_url, "transport": "sse"}],
                                        permissive_policies))
        async with sdk_client(gw.mcp) as client:
            assert "paid 3" in text_of(await client.call_tool("payments__pay", {"account": "a", "amount": 3}))


async def test_legacy_sse_inbound_client(start_gateway, http_upstreams, permissive_policies):
    gw = await start_gateway(config([{"name": n, "url": u} for n, u in http_upstreams.items()],
                                    permissive_policies))
    async with Client(sse_client(f"{gw.url}/sse"), mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "inventory__get_stock" in names
        assert text_of(await client.call_tool("inventory__get_stock", {"sku": "widget"})) == "widget: 42 in stock"


@pytest.fixture(params=["streamable_http", "sse", "stdio"])
async def any_upstream(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "stdio":
        yield {"name": "inventory", "command": demo("inventory")}
    elif request.param == "sse":
        async with run_sse_server(inventory_server()) as url:
            yield {"name": "inventory", "url": url, "transport": "sse"}
    else:
        async with run_http_server(inventory_server()) as url:
            yield {"name": "inventory", "url": url}


@pytest.mark.parametrize("inbound", ["streamable-legacy", "streamable-stateless", "sse"])
async def test_every_inbound_transport_over_every_upstream_transport(start_gateway, permissive_policies,
                                                                      any_upstream, inbound):
    gw = await start_gateway(config([any_upstream], permissive_policies))
    if inbound == "sse":
        client_cm: Any = Client(sse_client(f"{gw.url}/sse"), mode="legacy")
    else:
        client_cm = sdk_client(gw.mcp, mode="legacy" if inbound == "streamable-legacy" else "auto")
    async with client_cm as client:
        assert "inventory__get_stock" in {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("inventory__get_stock", {"sku": "gadget"})
        assert text_of(result) == "gadget: 7 in stock"
        contents = await client.read_resource("customs://inventory/inventory://skus")
        assert "widget" in contents.contents[0].text


def paged_server(name: str, count: int, page: int = 2) -> Any:
    import mcp_types as types
    from mcp.server import Server

    tools = [types.Tool(name=f"{name}_{i}", input_schema={"type": "object"}) for i in range(count)]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        more = start + page < len(tools)
        return types.ListToolsResult(tools=tools[start:start + page], next_cursor=str(start + page) if more else None)

    return Server(name, on_list_tools=list_tools)


async def test_pagination_across_aggregated_upstreams(start_gateway, permissive_policies):
    async with run_http_server(paged_server("alpha", 5)) as a, run_http_server(paged_server("beta", 3)) as b:
        gw = await start_gateway(config([{"name": "alpha", "url": a}, {"name": "beta", "url": b}],
                                        permissive_policies))
        async with sdk_client(gw.mcp) as client:
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(10):
                page = await client.list_tools(cursor=cursor)
                seen += [t.name for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
            expected = [f"alpha__alpha_{i}" for i in range(5)] + [f"beta__beta_{i}" for i in range(3)]
            assert sorted(seen) == sorted(expected)
            assert len(seen) == len(set(seen))
            with pytest.raises(Exception) as info:
                await client.list_tools(cursor="not-a-cursor")
            assert "cursor" in str(info.value).lower()
