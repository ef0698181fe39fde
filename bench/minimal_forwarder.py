"""The smallest useful MCP pass-through proxy (aiohttp): the baseline the gateway's overhead is measured against.

Run: .venv/bin/python bench/minimal_forwarder.py --upstream URL [--port 0]   (prints `listening on <url>`)
Forwards POST/GET/DELETE /mcp with the MCP headers and returns status, body and session header.
No identity, policy, sessions or streaming: just one ClientSession and a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import aiohttp
from aiohttp import web

PASS = ("Content-Type", "Accept", "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID")


async def serve(upstream: str, port: int) -> None:
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.Response:
        headers = {h: request.headers[h] for h in PASS if h in request.headers}
        async with client.request(request.method, upstream, data=await request.read(), headers=headers) as answer:
            out = {h: answer.headers[h] for h in ("Content-Type", "Mcp-Session-Id") if h in answer.headers}
            return web.Response(status=answer.status, body=await answer.read(), headers=out)

    app = web.Application()
    app.router.add_route("*", "/mcp", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await runner.cleanup()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="upstream MCP endpoint, e.g. http://127.0.0.1:9001/mcp")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
