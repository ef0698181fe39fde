"""A legacy HTTP+SSE upstream (real SDK server) whose answer to one call is an event past the 16 MiB cap: that call
fails with upstream_error, as over streamable HTTP, and the session's stream goes on: another call in flight on it is
answered, and the next call needs no re-opened session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.events import MAX_MESSAGE_BYTES
from gateway.transport.registry import build_upstream
from gateway.transport.sse import SseUpstream
from tests.support.servers import run_sse_server
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, text_of

pytestmark = pytest.mark.asyncio


def big_server(release: asyncio.Event) -> MCPServer:
    server = MCPServer("big")

    @server.tool()
    def big() -> str:
        """An answer past the gateway's cap of one message."""
        return "x" * (MAX_MESSAGE_BYTES + 1024)

    @server.tool()
    async def slow() -> str:
        """Answers once released."""
        await release.wait()
        return "slow done"

    @server.tool()
    def echo(value: str) -> str:
        """The value."""
        return value

    return server


@pytest.fixture
async def upstream(http: aiohttp.ClientSession) -> AsyncIterator[tuple[SseUpstream, asyncio.Event]]:
    release = asyncio.Event()
    async with run_sse_server(big_server(release)) as url:
        up = build_upstream(UpstreamConfig(name="big", url=url, transport="sse", timeout_s=60), http)
        assert isinstance(up, SseUpstream)
        await up.start()
        try:
            yield up, release
        finally:
            release.set()
            await up.stop()


async def test_an_oversized_answer_fails_only_its_own_call(upstream: tuple[SseUpstream, asyncio.Event]) -> None:
    up, release = upstream
    session = await up.connect(CLIENT_CAPS, Inbox())
    slow = asyncio.create_task(session.request(call("slow", request_id="s")))
    with pytest.raises(GatewayError) as failed:
        await asyncio.wait_for(session.request(call("big", request_id="b")), 50)
    # (on the old code: upstream_unavailable, the stream given up, and the slow call failed with it)
    assert failed.value.reason == "upstream_error", failed.value
    release.set()
    assert text_of(await asyncio.wait_for(slow, 30)) == "slow done"
    assert text_of(await session.request(call("echo", {"value": "after"}, request_id="e"))) == "after"
