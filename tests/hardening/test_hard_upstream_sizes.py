"""An upstream's answer is capped at 16 MiB as the gateway reads it, compressed or not.

aiohttp inflates a compressed answer (Content-Encoding gzip) as it reads it, so the answer's Content-Length,
which the cap used to be checked against, says nothing of its size: a 20 MiB answer sent as 20 KiB of gzip was
read whole into memory and passed on (a few MiB of gzip inflate to gigabytes)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hardening.conftest import ANON, RawClient, reason
from tests.support.servers import scripted_upstream

pytestmark = pytest.mark.asyncio
BIG = 20 * 1024 * 1024  # past the 16 MiB cap of one upstream message


def gzip_upstream() -> Any:
    """A streamable HTTP upstream answering every request with a gzip body (Content-Length: the compressed
    size). Tool `big` answers with a text of BIG bytes, `small` with a short one."""
    def result_of(message: dict[str, Any]) -> Any:
        if message["method"] == "tools/list":
            return {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("big", "small")]}
        size = BIG if message["params"]["name"] == "big" else 10
        return {"content": [{"type": "text", "text": "x" * size}]}

    def gzipped(answer: dict[str, Any]) -> web.Response:
        return web.Response(body=gzip.compress(json.dumps(answer).encode(), 1), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})
    return scripted_upstream(result_of, name="gz", encode=gzipped)


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
