"""Readiness of an HTTP upstream whose circuit is open: the probe's trial closes it, at a bounded rate."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.config.model import UpstreamConfig
from gateway.demo.servers import inventory_server
from gateway.errors import GatewayError
from gateway.transport.common import CircuitBreaker
from gateway.transport.sse import SseUpstream
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.support.servers import SeenRequest, run_http_server, run_sse_server
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, text_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def open_circuit(upstream: StreamableHttpUpstream | SseUpstream, threshold: int) -> None:
    for _ in range(threshold):
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.reason == "upstream_unavailable"
    assert upstream.breaker.is_open


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_probe_closes_the_open_circuit_once_the_upstream_is_back(
        http: aiohttp.ClientSession, bound_socket: socket.socket, transport: str) -> None:
    """Down at start, circuit opened by calls, upstream started on the same port: the probe alone
    (no call in between) turns it ready after the cooldown, and calls then flow."""
    port = bound_socket.getsockname()[1]
    upstream: StreamableHttpUpstream | SseUpstream
    if transport == "sse":
        upstream = SseUpstream(UpstreamConfig(name="up", url=f"http://127.0.0.1:{port}/sse", transport="sse"), http)
    else:
        upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=f"http://127.0.0.1:{port}/mcp"), http)
    clock = FakeClock()
    upstream.breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    await upstream.start()
    try:
        await open_circuit(upstream, 2)
        seen: list[SeenRequest] = []
        run = run_sse_server if transport == "sse" else run_http_server
        async with run(inventory_server(), sock=bound_socket, requests=seen):
            health = await upstream.probe()
            assert not health.ready and "circuit open" in health.detail
            assert seen == []  # still cooling down: the probe did not contact the upstream
            clock.now += 10
            health = await upstream.probe()
            assert health.ready and health.detail == "reachable" and not upstream.breaker.is_open
            assert [r.method for r in seen] == ["HEAD"]  # one cheap request, no MCP traffic
            session = await upstream.connect(CLIENT_CAPS, Inbox())
            assert text_of(await session.request(call("get_stock", {"sku": "widget"}))) == "widget: 42 in stock"
            assert upstream.health().ready
    finally:
        await upstream.stop()


@pytest.fixture
async def dropping_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A listener that accepts and at once resets every connection (counts them): a TCP connect
    succeeds, an HTTP request never does."""
    connections = [0]

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        await server.wait_closed()


async def test_probe_of_a_dead_upstream_is_shared_and_at_most_once_per_cooldown(
        http: aiohttp.ClientSession, dropping_listener: tuple[int, list[int]]) -> None:
    port, connections = dropping_listener
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=f"http://127.0.0.1:{port}/mcp"), http)
    clock = FakeClock()
    upstream.breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    await upstream.start()
    try:
        await open_circuit(upstream, 2)
        before = connections[0]
        healths = await asyncio.gather(*(upstream.probe() for _ in range(20)))
        assert connections[0] == before  # cooling down: nobody dialled
        for _ in range(3):
            clock.now += 10
            healths = await asyncio.gather(*(upstream.probe() for _ in range(20)))
            # Twenty /readyz, one shared trial: one HEAD request, which aiohttp retries once on a
            # dropped fresh connection (RFC 9112 retry of an idempotent request).
            assert before < connections[0] <= before + 2, (before, connections)
            before = connections[0]
            assert all(not h.ready and "circuit open" in h.detail for h in healths), healths
            assert not (await upstream.probe()).ready and connections[0] == before  # re-opened: no retry
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.data["circuit"] == "open"  # the failed trial restarted the cooldown for calls too
    finally:
        await upstream.stop()
