"""A stdio MCP server whose `flood` tool sends a call's progress notifications as fast as it can.

Run as `[sys.executable, FLOOD_SERVER_PATH]`. With FLOOD_DONE_FILE set, `flood` writes that file once
it has sent its last notification, so a test knows the flood is all on its way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

FLOOD_SERVER_PATH = str(Path(__file__).resolve())


def flood_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("flood")

    @server.tool()
    async def echo(value: str) -> str:
        """Return the value."""
        return value

    @server.tool()
    async def flood(count: int, size: int, ctx: Context) -> str:
        """Send `count` progress notifications carrying `size` characters each, then answer."""
        for step in range(count):
            await ctx.report_progress(step, count, "x" * size)
        done = os.environ.get("FLOOD_DONE_FILE")
        if done:
            Path(done).write_text("done")
        return "flooded"

    return server


if __name__ == "__main__":
    flood_server().run("stdio")
