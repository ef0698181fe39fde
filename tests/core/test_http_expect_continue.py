"""`Expect: 100-continue` on the MCP endpoints, and refusals that leave a body unread, seen on a raw socket.

aiohttp sends `100 Continue` as soon as the request's headers arrive; the gateway then refused an oversized body
with 413, after an honest client had been told to upload it all. And after any refusal aiohttp reads and throws
away the rest of the body for up to 10 s (its lingering read) before the connection is free or closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.demo.servers import inventory_server
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
LIMIT = 4096
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[Any]:
    async with run_http_server(inventory_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                   "policies": {"dir": str(permissive_policies)},
                                   "listen": {"max_body_bytes": LIMIT, "allowed_origins": ["https://ok.example"]}})


class Raw:
    """One connection to the gateway, speaking HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send_head(self, path: str, length: int, extra: dict[str, str] | None = None,
                        expect: bool = True) -> None:
        headers = {"Host": "127.0.0.1", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "Content-Length": str(length),
                   **({"Expect": "100-continue"} if expect else {}), **(extra or {})}
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode())
        await self.writer.drain()

    async def head(self) -> tuple[str, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = raw.decode().strip().split("\r\n")
        return status, {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}

    async def answer(self) -> tuple[str, dict[str, str], Any]:
        status, headers = await self.head()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 10)
        return status, headers, json.loads(body)

    async def closed_by_gateway(self) -> bool:
        """Whether the gateway ends the connection now, not after aiohttp's 10 s lingering read."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except TimeoutError:
            return False


@pytest.fixture
async def connect(gw: Any) -> AsyncIterator[Any]:
    opened: list[asyncio.StreamWriter] = []
    port = int(gw.url.rsplit(":", 1)[1])

    async def open_one() -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        return Raw(reader, writer)
    yield open_one
    for writer in opened:
        writer.close()


def too_large(body: Any) -> bool:
    return bool(body["error"]["code"] == -32014 and body["error"]["data"]["reason"] == "body_too_large")


@pytest.mark.parametrize("path", ["/mcp", "/mcp/inventory", "/messages?session_id=abc"])
async def test_an_oversized_body_announced_with_expect_is_refused_without_100_continue(connect, path):
    raw = await connect()
    await raw.send_head(path, LIMIT + 1)
    status, headers, body = await raw.answer()  # the first answer: no 100 Continue before it
    assert status.startswith("HTTP/1.1 413"), status
    assert too_large(body), body
    # The body never came and never will: the connection is closed, not held for it.
    assert headers.get("connection", "").lower() == "close", headers
    assert await raw.closed_by_gateway()


async def test_a_body_within_the_limit_gets_100_continue_and_is_served(connect):
    raw = await connect()
    body = json.dumps(INIT).encode()
    await raw.send_head("/mcp", len(body))
    status, _ = await raw.head()
    assert status == "HTTP/1.1 100 Continue"
    raw.writer.write(body)
    status, headers, answer = await raw.answer()
    assert status.startswith("HTTP/1.1 200"), (status, answer)
    assert answer["result"]["protocolVersion"] == "2025-11-25" and "mcp-session-id" in headers


@pytest.mark.parametrize(("extra", "why"), [({"Host": "evil.example"}, "host_forbidden"),
                                            ({"Origin": "https://evil.example"}, "origin_forbidden")])
async def test_host_and_origin_refusals_still_come_first(connect, extra, why):
    raw = await connect()
    await raw.send_head("/mcp", LIMIT + 1, extra)
    status, _, body = await raw.answer()
    assert status.startswith("HTTP/1.1 403") and body["error"]["data"]["reason"] == why, (status, body)


async def test_a_refusal_before_the_body_is_read_sends_no_100_continue(connect):
    raw = await connect()
    await raw.send_head("/mcp", 100, {"Content-Type": "text/plain"})
    status, _, body = await raw.answer()
    assert status.startswith("HTTP/1.1 415") and body["error"]["data"]["reason"] == "unsupported_media_type"


async def test_an_unknown_expectation_is_still_417(connect):
    raw = await connect()
    await raw.send_head("/mcp", 100, {"Expect": "something-else"})
    status, _ = await raw.head()
    assert status.startswith("HTTP/1.1 417"), status


async def test_an_oversized_body_sent_without_expect_is_not_read_after_the_413(connect):
    """Without Expect the client sends at once: after the 413 the connection is closed (RFC 9110 §15.5.14), not
    kept while aiohttp reads and discards the rest of the announced megabytes."""
    raw = await connect()
    await raw.send_head("/mcp", 10_000_000, expect=False)
    raw.writer.write(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "' + b"x" * 16_000)
    status, headers, body = await raw.answer()
    assert status.startswith("HTTP/1.1 413") and too_large(body), (status, body)
    assert headers.get("connection", "").lower() == "close", headers
    assert await raw.closed_by_gateway()


async def test_a_trickled_body_refused_408_closes_the_connection(start_gateway, permissive_policies):
    """408 body_timeout: the connection is closed with the answer, not after aiohttp drained the trickle."""
    async with run_http_server(inventory_server()) as url:
        slow = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                    "policies": {"dir": str(permissive_policies)}, "listen": {"body_timeout_s": 1}})
        reader, writer = await asyncio.open_connection("127.0.0.1", int(slow.url.rsplit(":", 1)[1]))
        try:
            raw = Raw(reader, writer)
            await raw.send_head("/mcp", 100, expect=False)
            writer.write(b'{"jso')  # and nothing more
            status, headers, body = await raw.answer()
            assert status.startswith("HTTP/1.1 408") and body["error"]["data"]["reason"] == "body_timeout", body
            assert headers.get("connection", "").lower() == "close", headers
            assert await raw.closed_by_gateway()
        finally:
            writer.close()
