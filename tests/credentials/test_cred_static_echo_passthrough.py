"""An upstream's own `initialize` answer, passed through on /mcp/{upstream} (and /sse/{upstream}, and `server/discover`
for stateless clients), never hands the agent a secret the gateway holds: a debugging server that quotes the
headers it was opened with (the key among them) in its instructions or its serverInfo would otherwise give the key
to every agent that connects. Real gateway, real SDK upstream, real SDK agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.server.mcpserver import MCPServer

from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
KEY = "sk-static-Qw3rTy-9f8e7d6c"


def quoting_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("quoting", title=f"opened with {KEY}", instructions=f"my key is {KEY}",
                                       version="1.0")

    @server.tool(description=f"Searches with {KEY}")
    def search(query: str) -> str:
        return query

    @server.prompt()
    def greet(name: str) -> str:
        return f"hello {name}"

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> types.Completion:
        return types.Completion(values=[f"{argument.value}-{KEY}"])

    return server


async def _gateway(start_gateway: Any, permissive_policies: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("QUOTED_KEY", KEY)
    return await start_gateway({
        "upstreams": [{"name": "quoting", "url": url,
                       "credentials": {"mode": "static", "value_env": "QUOTED_KEY", "value_prefix": "Bearer "}}],
        "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})


@pytest.mark.parametrize("agent", ["streamable", "legacy_sse", "stateless"])
async def test_the_upstreams_own_initialize_answer_has_the_key_taken_out(
        agent: str, start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_http_server(quoting_server()) as url:
        gw = await _gateway(start_gateway, permissive_policies, url, monkeypatch)
        if agent == "legacy_sse":
            client: Any = Client(sse_client(f"{gw.url}/sse/quoting"), mode="legacy")
        else:
            client = sdk_client(f"{gw.mcp}/quoting", mode="auto" if agent == "stateless" else "legacy")
        async with client as c:
            instructions, info = c.instructions, c.server_info
    # (on the old code both quoted the key: the upstream's answer was passed through as it came)
    assert instructions == "my key is [REDACTED]", instructions
    assert info is not None and info.title == "opened with [REDACTED]", info


# Lists, completion/complete, resources/subscribe and logging/setLevel reach the upstream through Router.fetch
# (on the old code it passed the answer, and a JSON-RPC error's data, on unscrubbed).
async def test_list_and_completion_answers_have_the_key_taken_out(
        start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_http_server(quoting_server()) as url:
        gw = await _gateway(start_gateway, permissive_policies, url, monkeypatch)
        async with sdk_client(gw.mcp) as c:
            tools = await c.list_tools()
            completed = await c.complete(types.PromptReference(type="ref/prompt", name="quoting__greet"),
                                         {"name": "name", "value": "a"})
    assert [t.description for t in tools.tools] == ["Searches with [REDACTED]"], tools
    assert completed.completion.values == ["a-[REDACTED]"], completed


# The pin watch lists tools on its own (gateway/pin_watch.py), not through Router.fetch: on the old code it pinned the
# description as the upstream sent it, the key in it, while the router had pinned it scrubbed, so the first watch pass
# saw a changed description and quarantined the tool.
async def test_the_pin_watch_sees_the_same_scrubbed_description(
        start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pin_watch import PinWatcher

    async with run_http_server(quoting_server()) as url:
        gw = await _gateway(start_gateway, permissive_policies, url, monkeypatch)
        async with sdk_client(gw.mcp) as c:
            assert [t.name for t in (await c.list_tools()).tools] == ["quoting__search"]
            (watcher,) = [o for o in gw.gateway.owners if isinstance(o, PinWatcher)]
            await watcher.verify_all()
            tools = await c.list_tools()
            result = await c.call_tool("quoting__search", {"query": "q"})
    assert [t.description for t in tools.tools] == ["Searches with [REDACTED]"], tools
    assert not result.is_error and "q" in str(result.content[0]), result
