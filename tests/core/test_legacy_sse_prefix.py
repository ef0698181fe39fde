"""A legacy HTTP+SSE (2024-11-05) client of a gateway published under a path prefix (`listen.public_url` with a path,
a reverse proxy that strips it): the `endpoint` event must name the POST URL under that prefix. It named the root
path (`/messages?session_id=…`), which the client resolves against the proxy's origin and the proxy does not
forward, so every old client behind such a proxy failed its `initialize` (the approvers' page had the same fault)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.sse import sse_client

from gateway.config.load import allow_all_policies
from gateway.demo.servers import inventory_server
from tests.conftest import bound_socket
from tests.e2e.test_approvals_page_prefix import PREFIX, stripping_proxy
from tests.support.servers import run_http_server


@pytest.fixture
async def public(start_gateway: Any) -> AsyncIterator[str]:
    """The gateway's public URL: a stripping proxy's `/customs` in front of a gateway with one upstream."""
    target: list[str] = []
    runner = web.AppRunner(stripping_proxy(target))
    await runner.setup()
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{PREFIX}"
    await web.SockSite(runner, sock).start()
    try:
        async with run_http_server(inventory_server()) as upstream:
            gw = await start_gateway({"listen": {"public_url": url}, "identity": {"mode": "anonymous"},
                                      "upstreams": [{"name": "inventory", "url": upstream}],
                                      "policies": {"dir": str(allow_all_policies())}})
            # The proxy holds its connection to the gateway until a write fails: short keep-alives end a stream the
            # client left soon after, so tearing the proxy down does not wait out the 15 s default.
            gw.gateway.endpoint.keepalive_s = 0.2
            target.append(gw.url)
            yield url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/sse", "/sse/inventory"])
async def test_the_endpoint_event_names_the_prefixed_messages_url(public: str, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(public + path, headers={"Accept": "text/event-stream"}) as r:
        assert r.status == 200
        async with asyncio.timeout(10):
            assert (await r.content.readline()).strip() == b"event: endpoint"
            data = (await r.content.readline()).decode().strip()
    assert data.startswith(f"data: {PREFIX}/messages?session_id="), data


async def test_a_legacy_sdk_client_works_through_the_prefix(public: str) -> None:
    async with asyncio.timeout(30), Client(sse_client(f"{public}/sse"), mode="legacy") as client:
        tools = await client.list_tools()
        assert "inventory__list_skus" in [tool.name for tool in tools.tools]
