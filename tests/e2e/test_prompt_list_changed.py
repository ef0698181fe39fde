"""An upstream's `notifications/prompts/list_changed` makes the gateway forget that upstream's prompt list
(gateway/prompt_list.py): a prompt it removed then answers `unknown_prompt`, exactly as a denied or missing one
(docs/errors.md), instead of being forwarded on the stale list to the upstream, whose own error tells it apart."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import aiohttp
from mcp.server.mcpserver import Context, MCPServer

from gateway.app import GATEWAY
from tests.support.contract import Agent
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually


def changing_server() -> tuple[MCPServer[Any], list[str]]:
    server: MCPServer[Any] = MCPServer("notes")
    got: list[str] = []

    @server.prompt()
    def old() -> str:
        """A prompt the upstream later removes."""
        got.append("old")
        return "old prompt"

    @server.tool()
    async def drop(ctx: Context) -> str:
        """Remove the prompt `old` and announce the change."""
        server.remove_prompt("old")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.session.send_prompt_list_changed()  # the handshake-era wire notification
        return "dropped"

    return server, got


async def test_a_prompt_removed_upstream_answers_like_a_missing_one(start_gateway: Any,
                                                                    permissive_policies: Path) -> None:
    server, got = changing_server()
    async with run_http_server(server) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "notes", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        agent = await Agent(http, gw.mcp, None).open()
        status, listed, _ = await agent.send({"jsonrpc": "2.0", "id": 1, "method": "prompts/list"})
        assert status == 200 and [p["name"] for p in listed["result"]["prompts"]] == ["notes__old"], listed
        status, answer, _ = await agent.send({"jsonrpc": "2.0", "id": 2, "method": "prompts/get",
                                              "params": {"name": "notes__old"}})
        assert status == 200 and "result" in answer and got == ["old"], answer
        status, dropped, _ = await agent.call("notes__drop", {})
        assert status == 200 and "result" in dropped, dropped
        # The notification may travel on the upstream's own stream: wait until the gateway has handled it.
        prompts = gw.app[GATEWAY].catalog.prompts
        await eventually(lambda: prompts.get("notes", "old") is None)
        status, gone, _ = await agent.send({"jsonrpc": "2.0", "id": 3, "method": "prompts/get",
                                            "params": {"name": "notes__old"}})
        status, missing, _ = await agent.send({"jsonrpc": "2.0", "id": 4, "method": "prompts/get",
                                               "params": {"name": "notes__never"}})
    assert gone["error"] == {**missing["error"], "message": missing["error"]["message"].replace("never", "old")}, gone
