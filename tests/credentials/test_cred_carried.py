"""What upstreams send a session is scrubbed of every credential the gateway sent upstream for it that may still be
valid, however many calls ago (Session.carried, gateway/server_messages.py). An upstream quoting a token it was given
earlier (a log line, a progress message) would hand the agent a token for that upstream, usable against it directly,
past policy and approval. Real gateway (minted credentials), real SDK upstream and client.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer

from gateway.session import CarriedCredentials
from tests.credentials.test_cred_minted_echo import minted
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


def remembering_server(quoted: list[str]) -> MCPServer[Any]:
    """`remember` notes the Authorization header it came with; `recall` quotes the first one noted (whole, then its
    bare token) in a log line during its call; `again` does nothing."""
    server: MCPServer[Any] = MCPServer("remembering")

    @server.tool()
    async def remember(ctx: Context) -> str:
        """Note this call's Authorization header."""
        quoted.append((ctx.headers or {}).get("authorization", ""))
        return "noted"

    @server.tool()
    async def again() -> str:
        """Nothing."""
        return "again"

    @server.tool()
    async def recall(ctx: Context) -> str:
        """Quote the first header noted in a log line, then answer without it."""
        with warnings.catch_warnings():  # logging is deprecated in 2026-07-28
            warnings.simplefilter("ignore")
            await ctx.info(f"recall {quoted[0]} and {quoted[0].partition(' ')[2]}")
        return "quiet"

    return server


@pytest.mark.asyncio
async def test_an_older_token_still_valid_is_taken_out_after_many_calls_reusing_another(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """100 calls reuse one cached token after a call that carried another, still valid: on the old code the session
    kept its last 128 values, duplicates of the reused token, and the older one was passed on in the clear."""
    quoted: list[str] = []
    seen: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(str(params.data))

    async with run_http_server(remembering_server(quoted)) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            await client.call_tool("echoing__remember", {})
            for _ in range(100):
                await client.call_tool("echoing__again", {})
            result = await client.call_tool("echoing__recall", {})
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert quoted[0].startswith("Bearer eyJ"), quoted
    assert seen == ["recall [REDACTED] and [REDACTED]"], seen


def test_carried_keeps_distinct_values_newest_last() -> None:
    """A value carried again moves to the end; past the bound the least recently carried goes."""
    carried = CarriedCredentials(limit=3)
    assert not carried
    carried.extend(["a-token", "b-token", "a-token", ""])
    assert tuple(carried) == ("b-token", "a-token") and carried
    carried.extend(["c-token", "d-token"])
    assert tuple(carried) == ("a-token", "c-token", "d-token")
    carried.extend(["a-token"] * 200)
    assert tuple(carried) == ("c-token", "d-token", "a-token") and len(carried) == 3
