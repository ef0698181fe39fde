"""A real SDK stdio MCP server that shows what `params._meta` each request arrived with.

Run as a stdio child: `[sys.executable, META_ECHO_SERVER_PATH]`. Its one tool, `seen_meta`, is listed
with the `_meta` of that tools/list request (JSON) as its description, and a call returns the call's
own `_meta`: how a test sees the trace context the gateway injected for a stdio upstream. Its other
tool, `seen_id`, does the same for the JSON-RPC request id the child received (the gateway's own id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

META_ECHO_SERVER_PATH = str(Path(__file__).resolve())


def _meta(params: Any) -> str:
    meta = getattr(params, "meta", None)
    if hasattr(meta, "model_dump"):
        meta = meta.model_dump(by_alias=True, exclude_none=True)
    return json.dumps(meta or {})


def meta_echo_server() -> Server[Any]:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name="seen_meta", description=_meta(params), input_schema={"type": "object"}),
            types.Tool(name="seen_id", description=json.dumps(ctx.request_id), input_schema={"type": "object"})])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = json.dumps(ctx.request_id) if params.name == "seen_id" else _meta(params)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("meta-echo", on_list_tools=list_tools, on_call_tool=call_tool)


async def _main() -> None:
    server = meta_echo_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(_main)
