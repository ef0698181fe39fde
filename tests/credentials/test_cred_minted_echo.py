"""The credential a call carried upstream never reaches the agent: an upstream that echoes the token it was sent (a
debugging tool, an error quoting its request) would hand the agent a token for that upstream, usable against it
directly, past policy and approval, until it expires or its task ends. Minted tokens are no secret the gateway holds
(known in advance, Redactor.scrub_known); the forward stage takes the exact value it sent out of the answer.
Real gateway (minted credentials), real SDK upstream and client.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError

from gateway.app import GATEWAY
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio


def echoing_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("echoing")

    @server.tool()
    async def whoami(ctx: Context) -> str:
        """Answer with the Authorization header this call came with."""
        return f"you sent {(ctx.headers or {}).get('authorization')}"

    @server.tool()
    async def chatty(ctx: Context) -> str:
        """Quote the token in a progress message and a log line during the call, then answer without it."""
        token = (ctx.headers or {}).get("authorization", "")
        with warnings.catch_warnings():  # logging is deprecated in 2026-07-28
            warnings.simplefilter("ignore")
            await ctx.report_progress(1, 2, f"progress with {token}")
            await ctx.info(f"log with {token[7:]}")
        return "quiet"

    @server.tool()
    async def aside(ctx: Context) -> str:
        """Quote the token in a log line tied to no request (the upstream's own stream), then answer."""
        token = (ctx.headers or {}).get("authorization", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.session.send_log_message("info", f"aside with {token[7:]}")
        return "quiet"

    @server.tool()
    async def fail(ctx: Context) -> str:
        """Answer a JSON-RPC error quoting the token."""
        raise MCPError(code=-32001, message=f"bad token {(ctx.headers or {}).get('authorization', '')[7:]}")

    return server


def minted(url: str, policies: Path, tmp_path: Path) -> dict[str, Any]:
    """A gateway minting the echoing upstream's credentials, anonymous callers, every call permitted."""
    return {"upstreams": [{"name": "echoing", "url": url, "credentials": {"mode": "minted"}}],
            "identity": {"mode": "anonymous"}, "policies": {"dir": str(policies)},
            "signing": {"key_dir": str(tmp_path / "keys")}}


async def test_the_minted_token_an_upstream_echoes_is_taken_out(start_gateway: Any, permissive_policies: Path,
                                                                tmp_path: Path) -> None:
    async with run_http_server(echoing_server()) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp) as client:
            echoed = await client.call_tool("echoing__whoami", {})
            with pytest.raises(MCPError) as failed:
                await client.call_tool("echoing__fail", {})
    text = echoed.content[0].text  # type: ignore[union-attr]
    assert text == "you sent [REDACTED]", text  # on the old code: "Bearer " and the minted JWT
    error = str(failed.value)
    assert "bad token [REDACTED]" in error and "eyJ" not in error, error


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_messages_during_the_call_have_its_token_taken_out(start_gateway: Any, permissive_policies: Path,
                                                                 tmp_path: Path) -> None:
    """Progress and log lines the upstream sends while the call runs, as its answer (on the old code they quoted the
    minted token: only the answer was scrubbed of it)."""
    seen: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(f"log: {params.data}")

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(f"progress: {message}")

    async with run_http_server(echoing_server()) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            result = await client.call_tool("echoing__chatty", {}, progress_callback=on_progress)
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert sorted(seen) == ["log: log with [REDACTED]", "progress: progress with [REDACTED]"], seen


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_a_message_outside_the_call_has_the_token_taken_out(start_gateway: Any, permissive_policies: Path,
                                                                  tmp_path: Path) -> None:
    """A log line tied to no request comes on the session's own stream, not through the call: the tokens of the
    session's calls are taken out there too (on the old code only messages routed to the call itself were)."""
    seen: list[str] = []
    arrived = asyncio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(str(params.data))
        arrived.set()

    async with run_http_server(echoing_server()) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            sessions = gw.app[GATEWAY].sessions._sessions.values()
            await eventually(lambda: any(s.get_stream_open for s in sessions))
            result = await client.call_tool("echoing__aside", {})
            await asyncio.wait_for(arrived.wait(), 15)
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert seen == ["aside with [REDACTED]"], seen
