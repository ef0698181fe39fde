"""Resources on the aggregated `/mcp` view: two real SDK upstreams with the same resource URI and URI
template never shadow each other. Lists show each upstream's URIs under its name (`customs://alpha/fake://r`);
reads, template-produced URIs, subscriptions, their updates and completions map to the right upstream
and back, in a fresh session too; `/mcp/{upstream}` keeps the upstream's own URIs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError

from tests.e2e.resource_support import (
    Env,
    Seen,
    Updates,
    record_subscriptions_and_completions,
    resource_gateway,
    text,
)
from tests.support.mcp_client import sdk_client

# resources/(un)subscribe are the handshake revisions' way (2026-07-28 replaces them), which the SDK warns about.
pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
NAMES = ("alpha", "beta")



def resource_server(name: str, seen: Seen) -> MCPServer[Any]:
    """The same static URI and URI template on every instance; contents say which server answered."""
    server: MCPServer[Any] = MCPServer(name)

    @server.resource("fake://r")
    def static() -> str:
        seen.requests.append(("resources/read", "fake://r"))
        return f"{name} r"

    @server.resource("fake://items/{id}")
    def item(id: str) -> str:
        seen.requests.append(("resources/read", f"fake://items/{id}"))
        return f"{name} item {id}"

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announce an update of `uri` (on this call's stream, so its arrival is ordered before the result)."""
        update = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri=uri))
        await ctx.session.send_notification(update, related_request_id=ctx.request_id)
        return "touched"

    record_subscriptions_and_completions(server._lowlevel_server, name, seen)
    return server


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[Env]:
    async with resource_gateway(start_gateway, permissive_policies, NAMES, resource_server) as value:
        yield value


async def test_same_uri_on_two_upstreams_lists_twice_and_reads_from_its_own(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        listed = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        assert listed == ["customs://alpha/fake://r", "customs://beta/fake://r"]
        templates = sorted(t.uri_template for t in (await client.list_resource_templates()).resource_templates)
        assert templates == ["customs://alpha/fake://items/{id}", "customs://beta/fake://items/{id}"]
        for name in NAMES:
            read = await client.read_resource(f"customs://{name}/fake://r")
            assert text(read) == f"{name} r"
            assert str(read.contents[0].uri) == f"customs://{name}/fake://r"  # the form the client can read again
    assert env.seen["alpha"].requests == [("resources/read", "fake://r")]
    assert env.seen["beta"].requests == [("resources/read", "fake://r")]


async def test_fresh_session_reads_static_and_template_uris_without_listing(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        assert text(await client.read_resource("customs://beta/fake://items/7")) == "beta item 7"
        assert text(await client.read_resource("customs://alpha/fake://r")) == "alpha r"
    async with sdk_client(env.mcp, mode="auto") as stateless:
        assert text(await stateless.read_resource("customs://alpha/fake://items/x")) == "alpha item x"
    assert env.seen["beta"].requests == [("resources/read", "fake://items/7")]
    assert env.seen["alpha"].requests == [("resources/read", "fake://r"), ("resources/read", "fake://items/x")]


@pytest.mark.parametrize("uri", ["fake://r", "customs://gamma/fake://r", "customs://alpha/", "customs://alpha", "customs:///fake://r",
                                 "alpha+fake://r"])
async def test_uri_naming_no_upstream_is_unknown_and_reaches_none(env: Env, uri: str) -> None:
    async with sdk_client(env.mcp) as client:
        for attempt in (client.read_resource, client.subscribe_resource):
            with pytest.raises(MCPError) as info:
                await attempt(uri)
            assert (info.value.code, info.value.error.message) == (-32002, f"Resource not found: {uri}")
    assert env.seen["alpha"].requests == env.seen["beta"].requests == []


async def test_subscription_update_and_completion_map_to_the_upstream_and_back(env: Env) -> None:
    updates = Updates()
    async with sdk_client(env.mcp, message_handler=updates) as client:
        await client.subscribe_resource("customs://beta/fake://r")
        assert env.seen["beta"].requests == [("resources/subscribe", "fake://r")]
        assert (await client.call_tool("beta__touch", {"uri": "fake://r"})).content[0].text == "touched"
        async with asyncio.timeout(10):
            await updates.arrived.wait()
        assert updates.uris == ["customs://beta/fake://r"]
        await client.unsubscribe_resource("customs://beta/fake://r")
        done = await client.complete(types.ResourceTemplateReference(uri="customs://alpha/fake://items/{id}"),
                                     {"name": "id", "value": "4"})
        assert done.completion.values == ["alpha-4"]
    assert env.seen["beta"].requests == [("resources/subscribe", "fake://r"), ("resources/unsubscribe", "fake://r")]
    assert env.seen["alpha"].requests == [("completion/complete", "fake://items/{id}")]


async def test_pass_through_view_keeps_the_upstreams_own_uris(env: Env) -> None:
    updates = Updates()
    async with sdk_client(f"{env.mcp}/alpha", message_handler=updates) as client:
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["fake://r"]
        assert [t.uri_template for t in (await client.list_resource_templates()).resource_templates] == [
            "fake://items/{id}"]
        read = await client.read_resource("fake://items/2")
        assert (text(read), str(read.contents[0].uri)) == ("alpha item 2", "fake://items/2")
        await client.call_tool("touch", {"uri": "fake://r"})
        async with asyncio.timeout(10):
            await updates.arrived.wait()
    assert updates.uris == ["fake://r"]
    async with sdk_client(f"{env.mcp}/alpha") as client:
        with pytest.raises(MCPError):  # the upstream's own answer: no such URI there
            await client.read_resource("customs://alpha/fake://r")
