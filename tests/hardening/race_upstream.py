"""An upstream for the race tests: `slow` waits until released and reports its cancellation, `echo` answers its args.

Run as a process (`python -m tests.hardening.race_upstream PORT`) so a test can kill it and start it again on the
same port, or in-process through `race_server`.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server import Server


@dataclass
class RaceState:
    started: int = 0
    announce: bool = False  # run as a process: print a line as each slow call starts
    cancelled: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


def race_server(state: RaceState) -> Server[Any]:
    tools = [types.Tool(name=name, description=name, input_schema={"type": "object"},
                        annotations=types.ToolAnnotations(read_only_hint=True)) for name in ("slow", "echo")]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "slow":
            state.started += 1
            if state.announce:
                print("slow started", flush=True)
            try:
                await state.release.wait()
            except asyncio.CancelledError:
                state.cancelled += 1
                raise
        return types.CallToolResult(content=[types.TextContent(type="text", text=repr(params.arguments))])

    return Server("race", on_list_tools=list_tools, on_call_tool=call_tool)


async def _serve(port: int) -> None:
    import socket

    from tests.support.servers import run_http_server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    async with run_http_server(race_server(RaceState(announce=True)), sock=sock) as url:
        print(f"serving {url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
