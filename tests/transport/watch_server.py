"""A real SDK stdio MCP server for shared-child routing tests: resource subscriptions (one set for
all the gateway's sessions, as any stdio server has), a tool that announces an update of a URI
only if it is subscribed, one that blocks the whole server (pings included) and then hangs, and
one that asks for a URL-mode elicitation and announces its completion after answering, and
one that writes a log line at info, if the level `logging/setLevel` last set (one for all the gateway's
sessions, as any stdio server has) lets it through.

Run as a stdio child: `[sys.executable, WATCH_SERVER_PATH]`.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

WATCH_SERVER_PATH = str(Path(__file__).resolve())
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def watch_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("watch")
    subscribed: set[str] = set()
    level = ["debug"]  # the level logging/setLevel last set
    background: set[asyncio.Task[None]] = set()

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Send notifications/resources/updated for `uri` when it is subscribed (not tied to this call)."""
        if uri not in subscribed:
            return "not subscribed"
        await ctx.session.send_notification(
            types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri=uri)))
        return "touched"

    @server.tool()
    async def stall(seconds: float) -> str:
        """Block the whole server (it answers nothing, not even ping) for `seconds`, then hang."""
        time.sleep(seconds)  # blocking on purpose: the event loop must not answer a ping meanwhile
        await asyncio.Event().wait()
        return "unreachable"

    @server.tool()
    async def note(text: str, ctx: Context) -> str:
        """Write `text` as a log line at info (unless the level set is above info)."""
        if LEVELS.index(level[0]) > LEVELS.index("info"):
            return "noted"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.info(text)
        return "noted"

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    @server.tool()
    async def url_flow(elicitation_id: str, ctx: Context) -> str:
        """Ask the client to open a URL (URL-mode elicitation); announce its completion after answering."""
        answer = await ctx.elicit_url("Sign in", "https://example.com/sign-in", elicitation_id)
        session = ctx.session

        async def complete_later() -> None:
            await asyncio.sleep(0.2)  # the user finishes out of band, after this call has been answered
            await session.send_elicit_complete(elicitation_id)
        background.add(asyncio.create_task(complete_later()))
        return answer.action

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        level[0] = params.level
        return types.EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    return server


if __name__ == "__main__":
    watch_server().run("stdio")
