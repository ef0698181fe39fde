"""A minimal, fast MCP-ish JSON-RPC upstream for load tests: every tools/call gets the same fixed result.

Run: .venv/bin/python bench/echo_upstream.py [--port 0]   (prints `listening on http://127.0.0.1:P/mcp`)
Speaks just enough streamable HTTP (JSON responses only, no GET stream) for a gateway or a proxy
to initialize a session, list one tool (`echo`) and call it. It is the "upstream costs ~nothing"
baseline of bench_core.py, so it does no validation beyond what a client needs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

TOOL = {"name": "echo", "description": "Returns a fixed text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "annotations": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True,
                        "openWorldHint": False}}
CALL_RESULT = {"content": [{"type": "text", "text": "ok"}], "isError": False}


def _initialize(params: dict[str, Any]) -> dict[str, Any]:
    return {"protocolVersion": params.get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
            "serverInfo": {"name": "echo", "version": "1.0.0"}}


RESULTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "initialize": _initialize,
    "ping": lambda params: {},
    "tools/list": lambda params: {"tools": [TOOL]},
    "tools/call": lambda params: CALL_RESULT,
    "resources/list": lambda params: {"resources": []},
    "prompts/list": lambda params: {"prompts": []},
}


async def handle_post(request: web.Request) -> web.Response:
    message = json.loads(await request.read())
    if "id" not in message:  # a notification (notifications/initialized, cancelled, ...)
        return web.Response(status=202)
    answer = RESULTS.get(message.get("method", ""))
    headers = {}
    if message.get("method") == "initialize":
        headers["Mcp-Session-Id"] = uuid.uuid4().hex
    if answer is None:
        body = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "Method not found"}}
    else:
        body = {"jsonrpc": "2.0", "id": message["id"], "result": answer(message.get("params") or {})}
    return web.Response(body=json.dumps(body).encode(), content_type="application/json", headers=headers)


async def handle_other(request: web.Request) -> web.Response:
    # No server-initiated stream (GET) and nothing to tear down (DELETE).
    return web.Response(status=405 if request.method == "GET" else 200)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/mcp", handle_post)
    app.router.add_route("GET", "/mcp", handle_other)
    app.router.add_route("DELETE", "/mcp", handle_other)
    return app


if __name__ == "__main__":
    from serve_app import main  # run as a script: bench/ is on sys.path
    main(__doc__, make_app, path="/mcp", backlog=1024)
