"""A fast MCP-ish JSON-RPC upstream for the soak test that counts every tool call it executed, per exact arguments.

Run: .venv/bin/python bench/counting_upstream.py [--port 0]   (prints `listening on http://127.0.0.1:P`)
Two servers on one port: `/inventory/mcp` (get_stock: read-only; audit_log: read-only, a gateway config marks
it restricted) and `/payments/mcp` (pay: a write). JSON responses only, a session id on initialize, no GET
stream (405). `GET /counts` returns {"executed": [[server, tool, canonical args JSON, times], ...],
"sessions": N}: the soak test compares it with what the gateway allowed, so a call executed twice (or one
that was never allowed) shows up.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

READ = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}
WRITE = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}
TOOLS: dict[str, list[dict[str, Any]]] = {
    "inventory": [
        {"name": "get_stock", "description": "Stock level of one SKU.", "annotations": READ,
         "inputSchema": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}},
        {"name": "audit_log", "description": "Internal audit entries (restricted by gateway config).",
         "annotations": READ, "inputSchema": {"type": "object", "properties": {"day": {"type": "string"}}}},
    ],
    "payments": [
        {"name": "pay", "description": "Pay an amount to an account.", "annotations": WRITE,
         "inputSchema": {"type": "object", "properties": {
             "account": {"type": "string"}, "amount": {"type": "number"}, "memo": {"type": "string"}},
             "required": ["account", "amount"]}},
    ],
}


def canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


class Counting:
    """The upstream's state: executions per (server, tool, args) and sessions opened."""

    def __init__(self) -> None:
        self.executed: Counter[tuple[str, str, str]] = Counter()
        self.sessions = 0

    def answer(self, server: str, message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        method, params = message.get("method", ""), message.get("params") or {}
        headers: dict[str, str] = {}
        result: dict[str, Any]
        if method == "initialize":
            self.sessions += 1
            headers["Mcp-Session-Id"] = uuid.uuid4().hex
            result = {"protocolVersion": params.get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
                      "serverInfo": {"name": server, "version": "1.0.0"}}
        elif method == "tools/list":
            result = {"tools": TOOLS[server]}
        elif method == "tools/call":
            name, args = params.get("name"), params.get("arguments") or {}
            if name not in {t["name"] for t in TOOLS[server]}:
                return {"error": {"code": -32602, "message": f"Unknown tool {name}"}}, headers
            self.executed[(server, str(name), canonical(args))] += 1
            result = {"content": [{"type": "text", "text": f"{name} ok"}], "isError": False}
        elif method in ("ping", "resources/list", "prompts/list"):
            result = {"ping": {}, "resources/list": {"resources": []}, "prompts/list": {"prompts": []}}[method]
        else:
            return {"error": {"code": -32601, "message": "Method not found"}}, headers
        return {"result": result}, headers


def make_app() -> web.Application:
    state = Counting()

    async def post(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:  # notifications
            return web.Response(status=202)
        body, headers = state.answer(request.match_info["server"], message)
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], **body}, headers=headers)

    async def other(request: web.Request) -> web.Response:
        return web.Response(status=405 if request.method == "GET" else 200)

    async def counts(request: web.Request) -> web.Response:
        executed = [[s, t, a, n] for (s, t, a), n in state.executed.items()]
        return web.json_response({"executed": executed, "sessions": state.sessions})

    app = web.Application()
    app.router.add_post("/{server:inventory|payments}/mcp", post)
    app.router.add_route("GET", "/{server:inventory|payments}/mcp", other)
    app.router.add_route("DELETE", "/{server:inventory|payments}/mcp", other)
    app.router.add_get("/counts", counts)
    return app


if __name__ == "__main__":
    from serve_app import main  # run as a script: bench/ is on sys.path
    main(__doc__, make_app, path="", backlog=2048)
