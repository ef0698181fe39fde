"""Fixtures for the hardening tests: a recording upstream, a one-shape policy, raw JSON-RPC over HTTP.

The recording upstream is a low-level SDK server that appends every tools/call it *receives*
(before any argument validation) to a list, so a test can prove what the gateway forwarded, not
only what a tool chose to execute. `raw_upstream` answers with exact bytes instead, for JSON no SDK would write.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from aiohttp import web
from mcp.server import Server

from tests.support.redis import redis_factory, redis_server  # noqa: F401  (re-exported fixtures)
from tests.support.servers import run_aiohttp, run_http_server

REPO = Path(__file__).resolve().parents[2]
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}}

# Only `rec/lookup` with sku == "widget" (and nothing cut from the arguments) is allowed, plus `rec/slow`
# (a call that waits until the test releases it).
ONE_SHAPE_POLICY = """
@id("only-lookup-widget")
permit (principal, action == Action::"call_tool", resource == Tool::"rec/lookup")
when { context.args has sku && context.args.sku == "widget" && !context.args_truncated };

@id("slow-for-fault-tests")
permit (principal, action == Action::"call_tool", resource == Tool::"rec/slow");

@id("lists")
permit (principal, action == Action::"list_tools", resource);
"""


def one_shape_policies(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (directory / "one.cedar").write_text(ONE_SHAPE_POLICY)
    return directory


@dataclass
class Recorder:
    """What the recording upstream received: (tool name, arguments) per tools/call."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    release: asyncio.Event | None = None  # set: the `slow` tool waits for it
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)


def recording_server(recorder: Recorder) -> Server[Any]:
    tools = [
        types.Tool(name="lookup", description="Read one SKU", input_schema={"type": "object"},
                   annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False)),
        types.Tool(name="transfer", description="Move money", input_schema={"type": "object"},
                   annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True)),
        types.Tool(name="slow", description="Waits until released", input_schema={"type": "object"},
                   annotations=types.ToolAnnotations(read_only_hint=True)),
    ]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        recorder.calls.append((params.name, params.arguments))
        if params.name == "slow":
            recorder.slow_started.set()
            if recorder.release is not None:
                await recorder.release.wait()
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"ran {params.name}")])

    return Server("rec", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def raw_upstream(tools: bytes,
                       call_result: Callable[[dict[str, Any]], bytes | Awaitable[bytes]]) -> AsyncIterator[str]:
    """A streamable HTTP upstream answering with exact bytes: `tools` is the array its tools/list gives,
    `call_result(message)` the result of each tools/call (or an awaitable of it: a tool that takes its time).
    For JSON a Python server may well write (NaN, Infinity, lone surrogates as escapes, nesting past the
    parser's limit) though no SDK model would build it."""
    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result = (b'{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},'
                      b'"serverInfo":{"name":"raw","version":"1"}}')
        elif message["method"] == "tools/list":
            result = b'{"tools":' + tools + b'}'
        else:
            answer = call_result(message)
            result = await answer if inspect.isawaitable(answer) else answer
        body = b'{"jsonrpc":"2.0","id":' + json.dumps(message["id"]).encode() + b',"result":' + result + b'}'
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


class RawClient:
    """JSON-RPC over plain aiohttp: exact bytes and headers, every status visible."""

    def __init__(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> None:
        self.http = http
        self.url = url
        self.headers = dict(headers or {})
        self.session_id: str | None = None

    async def initialize(self) -> str:
        status, headers, body = await self.post(INIT)
        assert status == 200, body
        self.session_id = headers["Mcp-Session-Id"]
        return self.session_id

    async def post(self, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        sent = {**ACCEPT, **self.headers, **(headers or {})}
        if self.session_id and "Mcp-Session-Id" not in sent:
            sent["Mcp-Session-Id"] = self.session_id
        async with self.http.post(self.url, data=data, headers=sent) as resp:
            text = await resp.text()
            return resp.status, dict(resp.headers), _decode(text, resp.headers.get("Content-Type", ""))

    async def call(self, name: str, arguments: Any, request_id: Any = 1,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments}}
        return await self.post(body, headers=headers)


def _decode(text: str, content_type: str) -> Any:
    if content_type.startswith("text/event-stream"):
        # The final JSON-RPC answer is the last `data:` line of the stream.
        lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        return json.loads(lines[-1]) if lines else text
    try:
        return json.loads(text)
    except ValueError:
        return text


def reason(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str((body["error"].get("data") or {}).get("reason"))
    return None


async def poll(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until `check()` is true, polling with a bounded deadline (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Recorder, str]]:
    """A recording upstream whose slow tool waits for `release` (set at the end, so nothing hangs)."""
    recorder = Recorder(release=asyncio.Event())
    async with run_http_server(recording_server(recorder)) as url:
        yield recorder, url
        recorder.release.set()  # type: ignore[union-attr]


async def answered_roots_in_call(agent: Any, within: float) -> str:
    """A tools/call of the `ask` tool, whose upstream asks roots/list in the call's SSE answer; the agent answers it
    (202) and the call's answer stream is read to its end: the stream's text. `agent` has `http`, `url`, `headers()`
    and `post(message)` (the garbage tables' agents)."""
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {}}}
    async with asyncio.timeout(within), agent.http.post(agent.url, json=call, headers=agent.headers()) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream", await resp.text()
        line = b""
        while not line.startswith(b"data:"):
            line = await resp.content.readline()
        asked = json.loads(line[5:])
        assert asked["method"] == "roots/list", asked
        status, _, body = await agent.post({"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": []}})
        assert status == 202, (status, body)
        text: str = (await resp.read()).decode()
        return text


def decode_answer(text: str) -> Any:
    """An answer's body as JSON: the last `data:` event of an SSE stream, else the whole text (kept as text when it
    is no JSON: a text/plain answer)."""
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    try:
        return json.loads(data[-1] if data else text)
    except ValueError:
        return text


class RawAgent:
    """A raw streamable HTTP agent on one gateway view (the upstream-garbage tables): every answer within `within` s,
    decoded by `decode` (an SSE stream's last event)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, within: float = 15.0) -> None:
        self.http, self.url, self.session_id, self.within = http, url, "", within

    def headers(self) -> dict[str, str]:
        extra = {"Mcp-Session-Id": self.session_id, "MCP-Protocol-Version": "2025-11-25"} if self.session_id else {}
        return {**ACCEPT, **extra}

    def decode(self, text: str) -> Any:
        return decode_answer(text)

    async def post(self, message: dict[str, Any]) -> tuple[int, str, Any]:
        async with asyncio.timeout(self.within), self.http.post(self.url, json=message, headers=self.headers()) as resp:
            text = await resp.text()
            if not self.session_id and resp.status == 200:
                self.session_id = resp.headers.get("Mcp-Session-Id", "")
            return resp.status, resp.headers.get("Content-Type", ""), self.decode(text)

    async def request(self, method: str, params: dict[str, Any] | None = None, rid: int = 1) -> tuple[int, str, Any]:
        return await self.post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})

    async def end(self) -> int:
        async with asyncio.timeout(self.within), self.http.delete(self.url, headers=self.headers()) as resp:
            return resp.status
