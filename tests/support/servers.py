"""Run real MCP SDK servers (streamable HTTP, legacy SSE, stdio) on 127.0.0.1 for tests.

Each HTTP helper binds a socket on port 0 first (so the port is known and never races), serves
the SDK's own Starlette app with uvicorn in a task, waits for `server.started` and yields the URL.
The Host header a client sends (`127.0.0.1:<port>`) passes the SDK's DNS-rebinding protection,
which allows `127.0.0.1:*` for apps built with host="127.0.0.1".

Pass `requests=[]` to record every HTTP request the server received (method, path, headers).
`run_aiohttp` serves a hand-written aiohttp app the same way, for upstreams and services no SDK would build.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from aiohttp import web
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.sse import SseServerTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

AnyServer = MCPServer[Any] | Server[Any]


@dataclass
class SeenRequest:
    """One HTTP request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


def _recording(app: ASGIApp, requests: list[SeenRequest]) -> ASGIApp:
    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            requests.append(SeenRequest(scope["method"], scope["path"], headers))
        await app(scope, receive, send)
    return wrapper


def _lowlevel(server: AnyServer) -> Server[Any]:
    if isinstance(server, MCPServer):
        return server._lowlevel_server
    return server


@asynccontextmanager
async def run_asgi(app: ASGIApp, *, requests: list[SeenRequest] | None = None,
                   sock: socket.socket | None = None, keep_alive_s: int = 5) -> AsyncIterator[str]:
    """Serve any ASGI app on 127.0.0.1 (port 0 unless `sock` is given); yield `http://127.0.0.1:PORT`.

    `keep_alive_s` is how long uvicorn keeps an idle keep-alive connection open (its default, 5 s)."""
    if requests is not None:
        app = _recording(app, requests)
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="auto", timeout_graceful_shutdown=1,
                            timeout_keep_alive=keep_alive_s)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn-{port}")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # raises the start-up error
                    raise RuntimeError("uvicorn exited before starting")
                await asyncio.sleep(0.01)  # polling uvicorn's started flag, bounded by the timeout
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(5):
                await asyncio.shield(task)
        except (TimeoutError, Exception):
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sock.close()


@asynccontextmanager
async def run_aiohttp(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve an aiohttp app on 127.0.0.1 port 0 (`runner_options` go to its AppRunner); yield its base URL."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


SERVER_KEEPALIVE_S = 5.0  # how long uvicorn (the MCP SDK's server) and Node's http server keep an idle connection
CLOSE_MARGIN_S = 0.5  # a server's close timer firing as a request crosses it, on a loaded machine
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IdleCloser:
    """What a 5 s keep-alive server does to a request that crosses its close: `wrap(handler)` drops the connection of
    a request arriving after it sat idle `SERVER_KEEPALIVE_S - CLOSE_MARGIN_S` (no answer; counted in `dropped`)."""

    def __init__(self) -> None:
        self.idle_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self.dropped = 0

    def wrap(self, handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            since = self.idle_since.get(request.transport)
            if since is not None and time.monotonic() - since >= SERVER_KEEPALIVE_S - CLOSE_MARGIN_S:
                self.dropped += 1
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError()
            try:
                return await handler(request)
            finally:
                self.idle_since[request.transport] = time.monotonic()
        return handle


@asynccontextmanager
async def run_post_only_mcp(post: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An upstream whose `/mcp` takes POSTs with `post` and refuses GET and DELETE (405: no GET stream, no session
    to end); yield its `/mcp` URL."""
    async def no_stream(request: web.Request) -> web.Response:
        return web.Response(status=405)

    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", no_stream)
    app.router.add_delete("/mcp", no_stream)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


@asynccontextmanager
async def scripted_upstream(result_of: Callable[[dict[str, Any]], Any], *, name: str = "scripted",
                            encode: Callable[[dict[str, Any]], web.Response] | None = None) -> AsyncIterator[str]:
    """A streamable HTTP upstream written by hand: `initialize` and notifications answered as any server answers
    them, every other request's result `result_of(message)` (awaited when it is awaitable: a tool that takes its
    time), sent as JSON or as `encode(answer)` builds the response. Yields its /mcp URL."""
    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result: Any = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                           "serverInfo": {"name": name, "version": "1"}}
        else:
            result = result_of(message)
            if inspect.isawaitable(result):
                result = await result
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return encode(answer) if encode is not None else web.json_response(answer)

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


@asynccontextmanager
async def run_http_server(server: AnyServer, *, json_response: bool = False, stateless: bool = False,
                          requests: list[SeenRequest] | None = None, sock: socket.socket | None = None,
                          keep_alive_s: int = 5) -> AsyncIterator[str]:
    """A real SDK streamable-HTTP server; yields its endpoint URL (`http://127.0.0.1:PORT/mcp`)."""
    app = _lowlevel(server).streamable_http_app(json_response=json_response, stateless_http=stateless,
                                                host="127.0.0.1")
    async with run_asgi(app, requests=requests, sock=sock, keep_alive_s=keep_alive_s) as base:
        yield f"{base}/mcp"


def sse_app(server: AnyServer) -> Starlette:
    """The SDK's legacy HTTP+SSE app (GET /sse, POST /messages/) for any server, host 127.0.0.1 protection on."""
    from mcp.server.transport_security import TransportSecuritySettings

    lowlevel = _lowlevel(server)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*"],
                                         allowed_origins=["http://127.0.0.1:*"])
    sse = SseServerTransport("/messages/", security_settings=security)

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
        return Response()

    return Starlette(routes=[Route("/sse", endpoint=handle_sse, methods=["GET"]),
                             Mount("/messages/", app=sse.handle_post_message)])


@asynccontextmanager
async def run_sse_server(server: AnyServer, *, requests: list[SeenRequest] | None = None,
                         sock: socket.socket | None = None) -> AsyncIterator[str]:
    """A real SDK legacy-SSE server; yields the URL of its SSE endpoint (`http://127.0.0.1:PORT/sse`)."""
    async with run_asgi(sse_app(server), requests=requests, sock=sock) as base:
        yield f"{base}/sse"


def stdio_command(name: str) -> list[str]:
    """The command line that runs one demo server (inventory, payments) over stdio."""
    return [sys.executable, "-m", "gateway.demo.servers", name]
