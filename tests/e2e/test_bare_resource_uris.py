"""Resource URIs named on `/mcp` without `customs://<upstream>/` (as an agent written against one server would, or
taken from a tool result): two real SDK upstreams, fresh sessions. A URI (or template expansion) only one
upstream lists goes to it, for reads, subscriptions and completions; a URI both list, or none, is
unknown_resource and reaches no upstream; a `notifications/resources/list_changed` makes the gateway
ask again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError

from tests.e2e.resource_support import Env, Seen, record_subscriptions_and_completions, resource_gateway, text
from tests.support.mcp_client import sdk_client

# resources/(un)subscribe are the handshake revisions' way (2026-07-28 replaces them), which the SDK warns about.
pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
NAMES = ("alpha", "beta")



def resource_server(name: str, seen: Seen) -> MCPServer[Any]:
    """`fake://shared` and `fake://items/{id}` on every instance; `<name>://own` and `<name>://docs/{id}` on
    this one only; `fake://late` once the `publish` tool has run. Contents say which server answered."""
    server: MCPServer[Any] = MCPServer(name)

    def record(uri: str, answer: str) -> str:
        seen.requests.append(("resources/read", uri))
        return answer

    server.resource("fake://shared", name="shared")(lambda: record("fake://shared", f"{name} shared"))
    server.resource(f"{name}://own", name="own")(lambda: record(f"{name}://own", f"{name} own"))

    @server.resource("fake://items/{id}")
    def item(id: str) -> str:
        return record(f"fake://items/{id}", f"{name} item {id}")

    @server.resource(name + "://docs/{id}")
    def doc(id: str) -> str:
        return record(f"{name}://docs/{id}", f"{name} doc {id}")

    @server.tool()
    async def publish(ctx: Context) -> str:
        """Add `fake://late` and announce the changed list on this call's stream (ordered before the result)."""
        server.resource("fake://late", name="late")(lambda: record("fake://late", f"{name} late"))
        await ctx.session.send_notification(types.ResourceListChangedNotification(),
                                            related_request_id=ctx.request_id)
        return "published"

    record_subscriptions_and_completions(server._lowlevel_server, name, seen)
    return server


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[Env]:
    async with resource_gateway(start_gateway, permissive_policies, NAMES, resource_server) as value:
        yield value


async def unknown(client: Any, uri: str) -> None:
    with pytest.raises(MCPError) as info:
        await client.read_resource(uri)
    assert (info.value.code, info.value.error.message) == (-32002, f"Resource not found: {uri}")


async def test_bare_uri_only_one_upstream_lists_reads_from_it_in_a_fresh_session(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        read = await client.read_resource("beta://own")
        assert text(read) == "beta own"
        assert str(read.contents[0].uri) == "customs://beta/beta://own"  # the aggregated form, usable again
    async with sdk_client(env.mcp, mode="auto") as stateless:
        assert text(await stateless.read_resource("alpha://own")) == "alpha own"
    assert env.seen["beta"].requests == [("resources/read", "beta://own")]
    assert env.seen["alpha"].requests == [("resources/read", "alpha://own")]


async def test_bare_uri_expanded_from_one_upstreams_template_reads_from_it(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        assert text(await client.read_resource("alpha://docs/42")) == "alpha doc 42"
        assert text(await client.read_resource("beta://docs/x-1")) == "beta doc x-1"
    assert env.seen["alpha"].requests == [("resources/read", "alpha://docs/42")]
    assert env.seen["beta"].requests == [("resources/read", "beta://docs/x-1")]


@pytest.mark.parametrize("uri", ["fake://shared", "fake://items/3", "fake://nowhere", "customs://gamma/alpha://own",
                                 "alpha://docs/a/b"])
async def test_bare_uri_on_both_upstreams_or_neither_is_unknown_and_read_nowhere(env: Env, uri: str) -> None:
    async with sdk_client(env.mcp) as client:
        await unknown(client, uri)
        with pytest.raises(MCPError) as info:
            await client.subscribe_resource(uri)
        assert (info.value.code, info.value.error.message) == (-32002, f"Resource not found: {uri}")
    assert env.seen["alpha"].requests == env.seen["beta"].requests == []


async def test_bare_uri_subscription_and_template_completion_go_to_the_owner(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        await client.subscribe_resource("alpha://own")
        done = await client.complete(types.ResourceTemplateReference(uri="beta://docs/{id}"),
                                     {"name": "id", "value": "4"})
        assert done.completion.values == ["beta-4"]
        with pytest.raises(MCPError) as info:  # both list this template
            await client.complete(types.ResourceTemplateReference(uri="fake://items/{id}"),
                                  {"name": "id", "value": "4"})
        assert info.value.code == -32002
    assert env.seen["alpha"].requests == [("resources/subscribe", "alpha://own")]
    assert env.seen["beta"].requests == [("completion/complete", "beta://docs/{id}")]


async def test_list_changed_makes_the_gateway_ask_again(env: Env) -> None:
    async with sdk_client(env.mcp) as client:
        await unknown(client, "fake://late")  # what each upstream lists is remembered now
        assert (await client.call_tool("beta__publish", {})).content[0].text == "published"
        assert text(await client.read_resource("fake://late")) == "beta late"
    assert env.seen["beta"].requests == [("resources/read", "fake://late")]
