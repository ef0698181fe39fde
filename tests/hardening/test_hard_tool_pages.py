"""An upstream's tools/list pages, read by the router when a call comes before any list: past 100 pages it
gave up quietly and treated what it had as the whole list, so every tool on a later page was `unknown_tool`
(and an upstream whose cursor never ends cost 100 requests at every load). It is now upstream_error, as the pin
watch and the resource owners already answered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import RawClient, reason
from tests.support.servers import scripted_upstream

pytestmark = pytest.mark.asyncio


def paged(pages: int | None) -> Callable[[dict[str, Any]], Any]:
    """Tool `t<n>` on page n of the upstream's tools/list; `pages` None: the cursor never ends."""
    def result_of(message: dict[str, Any]) -> Any:
        if message["method"] == "tools/list":
            page = int((message.get("params") or {}).get("cursor") or 0)
            result: dict[str, Any] = {"tools": [{"name": f"t{page}", "inputSchema": {"type": "object"}}]}
            if pages is None or page + 1 < pages:
                result["nextCursor"] = str(page + 1)
            return result
        return {"content": [{"type": "text", "text": message["params"]["name"]}], "isError": False}
    return result_of


@pytest.mark.parametrize(("pages", "tool", "expected"), [(5, "t3", "t3"), (None, "t150", "upstream_error")],
                         ids=["five pages", "a cursor that never ends"])
async def test_a_call_before_any_list_reads_every_page_or_fails_clearly(
        start_gateway: Any, permissive_policies: Path, pages: int | None, tool: str, expected: str) -> None:
    async with scripted_upstream(paged(pages)) as url:
        gw = await start_gateway({"upstreams": [{"name": "p", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies), "watch": False},
                                  "pinning": {"mode": "off"}})
        async with aiohttp.ClientSession() as http:
            client = RawClient(http, f"{gw.url}/mcp")
            await client.initialize()
            status, _, body = await client.call(f"p__{tool}", {})
    if expected == "upstream_error":  # (was unknown_tool: the list was taken as complete after 100 pages)
        assert reason(body) == "upstream_error", body
    else:
        assert status == 200 and body["result"]["content"][0]["text"] == expected, body
