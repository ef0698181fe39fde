"""The minimal forwarder plus what any MCP-aware proxy must do per call: the floor under the gateway's cost.

Run: .venv/bin/python bench/parsing_forwarder.py --upstream URL [--port 0]   (prints `listening on <url>`)
Like minimal_forwarder.py (one aiohttp ClientSession, POST /mcp only), but each request body is parsed
(orjson), the JSON-RPC id is replaced by one of its own upstream and restored in the answer, both
messages are serialised again, and the upstream call runs under a timeout. initialize is answered
here (no upstream session). No identity, policy, session state, records or metrics: what the gateway
costs above this proxy is the cost of those (docs/performance.md, "Where the instructions go").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from serve_app import serve

CLIENT = web.AppKey("client", aiohttp.ClientSession)
UPSTREAM_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def make_app(upstream: str) -> web.Application:
    ids = itertools.count(1)
    app = web.Application()

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[CLIENT].close()

    async def post(request: web.Request) -> web.Response:
        message = orjson.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message.get("method") == "initialize":
            result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "parsing-forwarder", "version": "1"}}
            return web.Response(body=orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}),
                                content_type="application/json", headers={"Mcp-Session-Id": uuid.uuid4().hex})
        outbound = {"jsonrpc": "2.0", "id": next(ids), "method": message["method"],
                    "params": message.get("params", {})}
        headers = {**UPSTREAM_HEADERS, "MCP-Protocol-Version": request.headers.get("MCP-Protocol-Version", "")}
        async with asyncio.timeout(30):
            async with app[CLIENT].post(upstream, data=orjson.dumps(outbound), headers=headers) as answer:
                reply = orjson.loads(await answer.read())
        reply["id"] = message["id"]
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/mcp", post)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="upstream MCP endpoint, e.g. http://127.0.0.1:9001/mcp")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(lambda: make_app(args.upstream), args.port, "/mcp"))


if __name__ == "__main__":
    main()
