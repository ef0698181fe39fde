"""Narrowing (`narrow_to_args`) for every item a token can name, through a real gateway and a real SDK upstream.

A `prompts/get` passes arguments too, and its token named the prompt with `account=null` ("not passed") though
the agent had passed one: an upstream checking, as docs/credentials.md says, that each narrowed value equals the
call's argument refused the legitimate request, and the claim was false. The prompt's token now carries its
arguments' values like a tool call's. A session-level token (set-up, listings) names no item and no argument:
it used to carry `args: {"account": null}` all the same; it now has no `args`, as its `scope` has none.
"""

from __future__ import annotations

from typing import Any

import jwt
from mcp.server.mcpserver import MCPServer

from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server


def accounts_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("accounts")

    @server.tool()
    def pay(account: str) -> str:
        return f"paid {account}"

    @server.prompt()
    def statement(account: str) -> str:
        return f"statement of {account}"

    @server.resource("data://summary")
    def summary() -> str:
        return "summary"

    return server


def claims_of(seen: list[SeenRequest]) -> list[dict[str, Any]]:
    return [jwt.decode(s.headers["authorization"].removeprefix("Bearer "), options={"verify_signature": False})
            for s in seen if s.method == "POST"]


async def test_each_item_is_narrowed_to_its_own_arguments(start_gateway, permissive_policies, tmp_path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(accounts_server(), requests=seen) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "acct", "url": url,
                           "credentials": {"mode": "minted", "narrow_to_args": ["account"]}}],
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        async with sdk_client(gw.mcp) as client:
            await client.list_tools()
            session = claims_of(seen)
            before = len(seen)
            prompt = await client.get_prompt("acct__statement", {"account": "acme-1"})
            assert "acme-1" in str(prompt.messages[0].content)
            (prompt_claims,) = [c for c in claims_of(seen[before:]) if c["scope"]]
            before = len(seen)
            await client.read_resource("customs://acct/data://summary")
            (resource_claims,) = claims_of(seen[before:])
            before = len(seen)
            result = await client.call_tool("acct__pay", {"account": "acme-2"})
            assert not result.is_error
            (tool_claims,) = claims_of(seen[before:])
    assert session and all(c["scope"] == "" and "args" not in c for c in session), session
    assert prompt_claims["scope"] == "statement account:acme-1" and prompt_claims["args"] == {"account": "acme-1"}
    assert resource_claims["scope"] == "data%3A%2F%2Fsummary account=null"  # a read passes no arguments
    assert resource_claims["args"] == {"account": None}
    assert tool_claims["scope"] == "pay account:acme-2" and tool_claims["args"] == {"account": "acme-2"}
