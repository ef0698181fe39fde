"""An upstream's answer is capped at 16 MiB as the gateway reads it, compressed or not.

aiohttp inflates a compressed answer (Content-Encoding gzip) as it reads it, so the answer's Content-Length,
which the cap used to be checked against, says nothing of its size: a 20 MiB answer sent as 20 KiB of gzip was
read whole into memory and passed on (a few MiB of gzip inflate to gigabytes)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hardening.conftest import ANON, RawClient, reason
from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio
BIG = 20 * 1024 * 1024  # past the 16 MiB cap of one upstream message


@asynccontextmanager
async def gzip_upstream() -> AsyncIterator[str]:
    """A streamable HTTP upstream answering every request with a gzip body (Content-Length: the compressed
    size). Tool `big` answers with a text of BIG bytes, `small` with a short one."""
    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result: Any = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                           "serverInfo": {"name": "gz", "version": "1"}}
        elif message["method"] == "tools/list":
            result = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("big", "small")]}
        else:
            size = BIG if message["params"]["name"] == "big" else 10
            result = {"content": [{"type": "text", "text": "x" * size}]}
        body = gzip.compress(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode(), 1)
        return web.Response(body=body, content_type="application/json", headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


async def test_a_compressed_answer_inflating_past_the_cap_is_upstream_error(start_gateway: Any,
                                                                           permissive_policies: Path) -> None:
    async with gzip_upstream() as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "gz", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        client = RawClient(http, gw.mcp)
        await client.initialize()
        status, _, body = await client.call("gz__big", {})
        assert status == 200 and reason(body) == "upstream_error", str(body)[:300]
        # Compressed answers inside the cap are read as before.
        status, _, body = await client.call("gz__small", {}, request_id=2)
        assert status == 200 and body["result"]["content"][0]["text"] == "x" * 10, body
