"""Fixtures for the upstream transport tests: real SDK servers behind every transport, an inbox
for messages the upstream sends, and a scripted aiohttp 'upstream' for protocol faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.transport.base import ConnectParams, Message, Upstream, UpstreamSession
from gateway.transport.registry import build_upstream
from tests.support.feature_server import FEATURE_SERVER_PATH, FeatureState, feature_server
from tests.support.servers import SeenRequest, run_http_server, run_sse_server

CLIENT_CAPS = ConnectParams(capabilities={"sampling": {}, "elicitation": {}})


class Inbox:
    """Records messages an upstream hands to the gateway; answers sampling/elicitation like a client."""

    def __init__(self, session: Callable[[], UpstreamSession | None] | None = None) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, message: Message) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        if "id" in message and self._session is not None:
            task = asyncio.create_task(self._answer(message))  # answer from elsewhere, as a client would
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Message) -> None:
        session = self._session() if self._session else None
        if session is None:
            return
        if message["method"] == "sampling/createMessage":
            result: dict[str, Any] = {"role": "assistant", "model": "test-model",
                                      "content": {"type": "text", "text": "sampled answer"}}
        elif message["method"] == "elicitation/create":
            result = {"action": "accept", "content": {"name": "Ada"}}
        else:
            result = {}
        await session.respond({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def methods(self) -> list[str]:
        return [m.get("method", "") for m in self.messages]

    async def wait_for(self, predicate: Callable[[Message], bool], within: float = 10.0) -> Message:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(predicate(m) for m in self.messages)), within)
            return next(m for m in self.messages if predicate(m))


def is_log(data: str) -> Callable[[Message], bool]:
    return lambda m: m.get("method") == "notifications/message" and (m.get("params") or {}).get("data") == data


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll a condition on state owned by another task or process (bounded, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _stopped(pid: int) -> bool:
    """Every thread of process `pid` is stopped (state T in /proc)."""
    tasks = f"/proc/{pid}/task"
    states = []
    for tid in os.listdir(tasks):
        with open(f"{tasks}/{tid}/stat") as stat:
            states.append(stat.read().rsplit(")", 1)[1].split()[0])
    return all(state == "T" for state in states)


@asynccontextmanager
async def frozen(pid: int | None) -> AsyncIterator[None]:
    """A stdio child stopped (SIGSTOP) for the block: it reads and answers nothing, as a child busy that long on a
    loaded machine would, but exactly until the test is done with it, however slowly the machine runs. Entered once
    every thread is stopped (nothing written inside can be read before); continued (SIGCONT) on the way out."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await eventually(lambda: _stopped(pid), within=30)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def call(name: str, args: dict[str, Any] | None = None, request_id: Any = 1, token: Any = None) -> Message:
    params: dict[str, Any] = {"name": name, "arguments": args or {}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def text_of(response: Message) -> str:
    return str(response["result"]["content"][0]["text"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@dataclass
class Features:
    """The feature server behind one transport, and how to tell that it saw a cancellation."""

    kind: str
    upstream: Upstream
    state: FeatureState | None
    cancel_file: Path | None
    requests: list[SeenRequest] = field(default_factory=list)

    def was_cancelled(self) -> bool:
        if self.state is not None:
            return self.state.cancelled.is_set()
        assert self.cancel_file is not None
        return self.cancel_file.exists() and "cancelled" in self.cancel_file.read_text()


@pytest.fixture(params=["streamable_http", "sse", "stdio"])
async def features(request: pytest.FixtureRequest, http: aiohttp.ClientSession,
                   tmp_path: Path) -> AsyncIterator[Features]:
    kind: str = request.param
    async with AsyncExitStack() as stack:
        seen: list[SeenRequest] = []
        if kind == "stdio":
            cancel_file = tmp_path / "cancelled.txt"
            config = UpstreamConfig(name="features", command=(sys.executable, FEATURE_SERVER_PATH),
                                    env={"FEATURE_CANCEL_FILE": str(cancel_file)}, timeout_s=20)
            state = None
        else:
            server, state = feature_server()
            runner = run_http_server if kind == "streamable_http" else run_sse_server
            url = await stack.enter_async_context(runner(server, requests=seen))
            config = UpstreamConfig(name="features", url=url, transport=kind, timeout_s=20)  # type: ignore[arg-type]
            cancel_file = None
        upstream = build_upstream(config, http)
        await upstream.start()
        stack.push_async_callback(upstream.stop)
        yield Features(kind, upstream, state, cancel_file, seen)


@pytest.fixture
def bound_socket() -> AsyncIterator[socket.socket]:  # type: ignore[misc]
    """A bound but not listening socket: connections to its port are refused until a server uses it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


CallHandler = Callable[[web.Request, Message], Awaitable[web.StreamResponse]]


@dataclass
class Scripted:
    url: str
    seen: list[tuple[str, Message | None]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of the non-POST requests

    def count(self, method: str) -> int:
        return sum(1 for _, m in self.seen if m and m.get("method") == method)


async def sse_open(request: web.Request, *events: bytes) -> web.StreamResponse:
    """A GET stream (for `scripted`'s `on_get`) that sends `events` (whole SSE frames) and stays open until the
    client leaves."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
    await asyncio.Event().wait()
    return response


INIT_RESULT = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
               "serverInfo": {"name": "scripted", "version": "1"}}


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[Scripted]]]:
    """An aiohttp 'MCP server' that handshakes normally and answers requests with a scripted handler
    (GET: 405 unless `on_get` is given)."""
    runners: list[web.AppRunner] = []

    async def start(on_request: CallHandler,
                    on_get: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
                    init_result: dict[str, Any] | None = None) -> Scripted:
        state = Scripted("")

        async def mcp(request: web.Request) -> web.StreamResponse:
            if request.method != "POST":
                state.seen.append((request.method, None))
                state.headers.append(dict(request.headers))
                if request.method == "GET" and on_get is not None:
                    return await on_get(request)
                return web.Response(status=405 if request.method == "GET" else 200)
            message = json.loads(await request.read())
            state.seen.append(("POST", message))
            if message.get("method") == "initialize":
                return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": init_result or INIT_RESULT},
                                         headers={"Mcp-Session-Id": "s-1"})
            if "id" not in message or "method" not in message:
                return web.Response(status=202)
            return await on_request(request, message)

        app = web.Application()
        app.router.add_route("*", "/mcp", mcp)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state.url = f"http://127.0.0.1:{port}/mcp"
        return state

    yield start
    for runner in runners:
        await runner.cleanup()
