"""A real SDK MCP server that echoes a key (env LEAKY_KEY) in everything it sends during a call and outside it.

Its tool `leak` reports progress, logs a line, elicits, asks for a sample (each quoting the key), then announces an
update of a resource whose URI holds the key and logs a line outside any call (no related request: the upstream's
own stream) and answers; `chatter` only the first two. In-process: `leaky_server()`; as a stdio child:
`[sys.executable, LEAKY_SERVER_PATH]` with LEAKY_KEY in its environment.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel

LEAKY_SERVER_PATH = str(Path(__file__).resolve())


class Name(BaseModel):
    name: str


def leaky_server(key: str | None = None) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("leaky")

    @server.tool()
    async def leak(ctx: Context) -> str:
        """Quote the key in progress, a log line, an elicitation, a sampling request and a log line of its own."""
        secret = key or os.environ["LEAKY_KEY"]
        with warnings.catch_warnings():  # logging, sampling and elicitation are deprecated in 2026-07-28
            warnings.simplefilter("ignore")
            await ctx.report_progress(1, 2, f"progress with {secret}")
            await ctx.info(f"log with {secret}")
            answer = await ctx.elicit(f"confirm the key {secret}", Name)
            sampled = await ctx.session.create_message(
                [SamplingMessage(role="user", content=TextContent(type="text", text=f"sample {secret}"))],
                max_tokens=10, related_request_id=ctx.request_id)
            await ctx.session.send_notification(types.ResourceUpdatedNotification(
                params=types.ResourceUpdatedNotificationParams(uri=f"file:///keys/{secret}")))
            await ctx.session.send_log_message("info", {"outside": f"unrelated {secret}"})
        text = sampled.content.text if isinstance(sampled.content, TextContent) else "?"
        return f"{answer.action} {text}"

    @server.tool()
    async def chatter(ctx: Context) -> str:
        """Quote the key in progress and a log line only (for clients that take no server→client requests)."""
        secret = key or os.environ["LEAKY_KEY"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.report_progress(1, 2, f"progress with {secret}")
            await ctx.info(f"log with {secret}")
        return "chattered"

    return server


if __name__ == "__main__":
    leaky_server().run("stdio")
