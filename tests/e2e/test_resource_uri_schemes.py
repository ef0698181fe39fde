"""Aggregated resource URIs (`customs://<upstream>/<its own URI>`) against URI schemes holding `+`: an
upstream named `git` and another whose own resource is `git+ssh://host/repo` (a real scheme) are never
confused, whether the client reads the listed aggregated form or the bare upstream URI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import MCPServer

from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio


def server(name: str, uri: str, reads: list[str]) -> MCPServer[Any]:
    """One resource, whose contents say which server answered and for which URI."""
    mcp: MCPServer[Any] = MCPServer(name)

    def read() -> str:
        reads.append(uri)
        return f"{name}: {uri}"

    mcp.resource(uri, name="repo")(read)
    return mcp


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[tuple[str, dict[str, list[str]]]]:
    # `git` holds `ssh://host/repo`: under the old `<upstream>+` form, `git+ssh://host/repo` named it.
    owned = {"git": "ssh://host/repo", "repos": "git+ssh://host/repo"}
    reads: dict[str, list[str]] = {name: [] for name in owned}
    async with AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(run_http_server(server(name, uri, reads[name])))
                for name, uri in owned.items()}
        gw = await start_gateway({"upstreams": [{"name": n, "url": u} for n, u in urls.items()],
                                  "policies": {"dir": str(permissive_policies)}})
        yield gw.mcp, reads


def text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


async def test_upstream_named_git_and_a_git_plus_ssh_uri_each_read_from_their_own(
        env: tuple[str, dict[str, list[str]]]) -> None:
    mcp, reads = env
    async with sdk_client(mcp) as client:
        # The upstream's own URI, as a tool result would carry it: it goes to the one upstream listing it.
        assert text(await client.read_resource("git+ssh://host/repo")) == "repos: git+ssh://host/repo"
        listed = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        assert listed == ["customs://git/ssh://host/repo", "customs://repos/git+ssh://host/repo"]
        for uri in listed:
            read = await client.read_resource(uri)
            assert str(read.contents[0].uri) == uri
        assert text(await client.read_resource("customs://git/ssh://host/repo")) == "git: ssh://host/repo"
        assert text(await client.read_resource("customs://repos/git+ssh://host/repo")) == "repos: git+ssh://host/repo"
    assert reads["git"] == ["ssh://host/repo"] * 2
    assert reads["repos"] == ["git+ssh://host/repo"] * 3
