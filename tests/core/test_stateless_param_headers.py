"""Stateless (2026-07-28) `tools/call`: the `Mcp-Param-*` headers a tool's input schema declares
(`x-mcp-header`) are checked against the call's arguments, as the MCP SDK's own server checks them: one that
disagrees, is missing for a given argument or names an absent one is refused with -32020 `header_mismatch`
(HTTP 400) and the tool never runs; a denied tool still answers as a missing one. An intermediary in front of
the gateway may route on these headers, so a request whose headers say one thing and whose body another must
not be executed. Real gateway, real SDK upstream, raw HTTP and the SDK's stateless client (which sends them)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer
from multidict import CIMultiDict
from pydantic import Field

from tests.conftest import REPO
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
Region = Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]
Shard = Annotated[int, Field(json_schema_extra={"x-mcp-header": "Shard"})]


def routed_server(executed: list[str]) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("routed")

    @server.tool()
    def route(region: Region, shard: Shard = 0, note: str = "") -> str:
        """Runs in one region (a header an intermediary may route on)."""
        executed.append(f"route:{region}:{shard}")
        return f"ran in {region}/{shard}"

    @server.tool()
    def secret_route(region: Region) -> str:
        """Denied by policy."""
        executed.append(f"secret_route:{region}")
        return region

    return server


@pytest.fixture
async def routed(start_gateway: Any, tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (policies / "p.cedar").write_text(
        '@id("allow-all")\npermit(principal, action, resource);\n'
        '@id("no-secret") forbid(principal, action == Action::"call_tool", resource)\n'
        '  when { resource.name == "secret_route" };\n')
    executed: list[str] = []
    async with run_http_server(routed_server(executed)) as url:
        gw = await start_gateway({"upstreams": [{"name": "r", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(policies)}})
        yield gw.mcp, executed


async def call(url: str, name: str, arguments: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}
    sent = {**ACCEPT, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name, **headers}
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=sent) as resp:
        reply: dict[str, Any] = json.loads(await resp.text())
        return resp.status, reply


async def list_tools(url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    sent = {**ACCEPT, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=sent) as resp:
        assert resp.status == 200


MISMATCHES = [
    pytest.param({"region": "eu"}, {"Mcp-Param-Region": "us"}, id="value-differs"),
    pytest.param({"region": "eu"}, {}, id="header-missing"),
    pytest.param({"region": "eu", "shard": 3}, {"Mcp-Param-Region": "eu"}, id="second-header-missing"),
    pytest.param({"region": "eu"}, {"Mcp-Param-Region": "eu", "Mcp-Param-Shard": "3"}, id="argument-absent"),
    pytest.param({"region": "eu", "shard": 3}, {"Mcp-Param-Region": "eu", "Mcp-Param-Shard": "4"}, id="int-differs"),
    pytest.param({"region": "eu"}, {"Mcp-Param-Region": "=?base64?dXM=?="}, id="base64-differs"),
]


@pytest.mark.parametrize("listed", [True, False], ids=["tools-listed", "tools-not-listed-yet"])
@pytest.mark.parametrize(("arguments", "headers"), MISMATCHES)
async def test_a_param_header_that_disagrees_with_the_body_is_refused_and_not_run(
        routed: tuple[str, list[str]], listed: bool, arguments: dict[str, Any], headers: dict[str, str]) -> None:
    url, executed = routed
    if listed:
        await list_tools(url)
    status, reply = await call(url, "r__route", arguments, headers)
    assert status == 400, reply
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32020 and reply["error"]["data"]["reason"] == "header_mismatch", reply
    assert "Mcp-Param-" in reply["error"]["message"]
    assert executed == []


async def test_a_param_header_given_twice_is_refused(routed: tuple[str, list[str]]) -> None:
    """First-copy and last-copy readers would disagree on which value the proxy routed on."""
    url, executed = routed
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "r__route", "arguments": {"region": "eu"}, "_meta": META}}
    sent = CIMultiDict({**ACCEPT, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
                        "Mcp-Name": "r__route"})
    sent.add("Mcp-Param-Region", "us")
    sent.add("Mcp-Param-Region", "eu")
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=sent) as resp:
        reply = json.loads(await resp.text())
        assert resp.status == 400 and reply["error"]["data"]["reason"] == "header_mismatch", reply
    assert "more than once" in reply["error"]["message"] and executed == []


@pytest.mark.parametrize(("arguments", "headers"), [
    pytest.param({"region": "eu"}, {"Mcp-Param-Region": "eu"}, id="plain"),
    pytest.param({"region": "eu", "shard": 3}, {"Mcp-Param-Region": "eu", "mcp-param-shard": "3.0"}, id="numeric"),
    pytest.param({"region": "eu"}, {"Mcp-Param-Region": "=?base64?ZXU=?="}, id="base64"),
    pytest.param({"region": "eu", "note": "x"}, {"Mcp-Param-Region": "eu", "Mcp-Param-Other": "y"}, id="undeclared"),
])
async def test_matching_param_headers_are_served(routed: tuple[str, list[str]], arguments: dict[str, Any],
                                                 headers: dict[str, str]) -> None:
    url, executed = routed
    status, reply = await call(url, "r__route", arguments, headers)
    assert status == 200 and reply["result"]["isError"] is False, reply
    assert executed == [f"route:eu:{arguments.get('shard', 0)}"]


async def test_a_denied_tool_answers_as_a_missing_one_whatever_its_headers(routed: tuple[str, list[str]]) -> None:
    url, executed = routed
    await list_tools(url)
    denied = await call(url, "r__secret_route", {"region": "eu"}, {"Mcp-Param-Region": "us"})
    missing = await call(url, "r__nope", {"region": "eu"}, {"Mcp-Param-Region": "us"})
    assert denied[0] == missing[0] == 400
    assert denied[1]["error"] == {**missing[1]["error"], "message": "Unknown tool: r__secret_route"}
    assert denied[1]["error"]["data"]["reason"] == "unknown_tool"
    assert executed == []


async def test_the_sdks_stateless_client_sends_the_headers_it_lists(routed: tuple[str, list[str]]) -> None:
    url, executed = routed
    async with sdk_client(url, mode="2026-07-28") as client:
        await client.list_tools()
        result = await client.call_tool("r__route", {"region": "ap", "shard": 2})
    assert result.is_error is False
    assert executed == ["route:ap:2"]


async def test_handshake_sessions_are_not_checked(routed: tuple[str, list[str]]) -> None:
    """The headers belong to the stateless revision: a session's POST is served as before."""
    url, executed = routed
    async with sdk_client(url, mode="legacy") as client:
        result = await client.call_tool("r__route", {"region": "eu"})
    assert result.is_error is False and executed == ["route:eu:0"]
