"""An upstream MCP server written on bare asyncio streams, for answers no HTTP server library would write.

Every connection carries one request and is closed after its answer (`Connection: close`). A request whose key
is in `garbage` gets those exact bytes back (none: the connection is closed before any answer); every other one
is answered as a small streamable HTTP (or, with `legacy`, HTTP+SSE) server answers it. A request's key is its
HTTP method for GET, DELETE and HEAD (the readiness probe's trial), else its JSON-RPC method (`tools/list#2`: the
second page; `answer`: a response to a server→client request; `resume`: a GET with Last-Event-ID; `form`: an OAuth
token request, answered with a token). `sse` answers requests with an SSE stream instead of JSON; `resumable` ends a
call's SSE answer after a priming event (an id, no answer) for the client to resume. `session_id` and `endpoint`
are what initialize's answer and a legacy stream's endpoint event name, as bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

_JSON = b"Content-Type: application/json\r\nConnection: close\r\n"  # every connection carries one request
_CUT = b'{"jsonrpc": "2.0", "id": 7, "result": {"cont'
_ENDPOINT = b"event: endpoint\ndata: /messages\n\n"  # a legacy stream's start (skipped by a streamable reader)
_STREAM = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"

# The kinds of garbage, as the exact bytes an upstream answers with before closing the connection.
GARBAGE: dict[str, bytes] = {
    "bad_status_line": b"HTTP/1.1 abc Nonsense\r\n\r\n",
    "header_without_colon": b"HTTP/1.1 200 OK\r\n" + _JSON + b"ThisLineHasNoColon\r\nContent-Length: 2\r\n\r\n{}",
    "bad_chunked": b"HTTP/1.1 200 OK\r\n" + _JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n",
    "short_body": b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Length: 4000\r\n\r\n" + _CUT,
    "cut_json": b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Length: %d\r\n\r\n" % len(_CUT) + _CUT,
    "sse_cut_mid_event": (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                          b"event: message\ndata: " + _CUT),
    # A stream whose head is fine, broken after its first event.
    "stream_bad_chunk": (_STREAM + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(_ENDPOINT) + _ENDPOINT
                         + b"\r\nzz\r\nnot a chunk\r\n"),
    "stream_short": _STREAM + b"Content-Length: 5000\r\n\r\n" + _ENDPOINT + b"event: message\ndata: " + _CUT,
    # An SSE `retry` field Python calls digits but int() refuses (a superscript two, past int()'s 4,300 digits).
    "sse_retry_not_a_number": (_STREAM + b"Connection: close\r\n\r\n" + "retry: \u00b2\n\n".encode() + _ENDPOINT
                               + b"event: message\ndata: " + _CUT),
    "sse_retry_too_long": (_STREAM + b"Connection: close\r\n\r\nretry: " + b"9" * 5000 + b"\n\n" + _ENDPOINT
                           + b"event: message\ndata: " + _CUT),
    # An SSE answer ending after an event id no request can carry back (Last-Event-ID): a control character.
    "sse_id_unsendable": _STREAM + b"Connection: close\r\n\r\n" + b"id: p\x01q\nretry: 10\ndata:\n\n",
    "huge_header": b"HTTP/1.1 200 OK\r\n" + _JSON + b"X-Huge: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "bad_gzip": b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip",
    "chunked_and_length": (b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\n{}\r\n0\r\n\r\n"),
    "negative_length": b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Length: -5\r\n\r\n{}",
    "continue_then_close": b"HTTP/1.1 100 Continue\r\n\r\n",
    "switching_protocols": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                            b"\x81\x00"),
    "http09": b'{"jsonrpc": "2.0", "id": 1, "result": {}}',
    "closed_before_answer": b"",
}

INIT_RESULT = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
               "serverInfo": {"name": "garbage", "version": "1"}}
PAGES = {None: ([{"name": "echo", "inputSchema": {"type": "object"}},
                 {"name": "ask", "inputSchema": {"type": "object"}}], "2"),
         "2": ([{"name": "second", "inputSchema": {"type": "object"}}], None)}
ROOTS = {"jsonrpc": "2.0", "id": "ask-1", "method": "roots/list"}


@dataclass
class GarbageUpstream:
    garbage: dict[str, bytes] = field(default_factory=dict)
    sse: bool = False
    legacy: bool = False
    resumable: bool = False
    session_id: bytes = b"s-1"  # the Mcp-Session-Id initialize is answered with (streamable HTTP)
    endpoint: bytes = b"/messages"  # the legacy stream's endpoint event
    url: str = ""
    seen: list[str] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a response to `roots/list` arrived
    _legacy_stream: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _streams: list[asyncio.Queue[bytes | None]] = field(default_factory=list)
    _primed: Any = None

    def stop(self) -> None:
        """End every open legacy stream and waiting SSE answer (the server is going away)."""
        self.answered.set()
        for stream in self._streams:
            stream.put_nowait(None)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, resume, body = await _read_request(reader)
            await self._answer(method, resume, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, resume: bool, body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            message: dict[str, Any] = json.loads(body) if body else {}
        except ValueError:  # a form (an OAuth token request): answered 200 with a token unless it gets garbage
            message = {"method": "form", "id": None}
        key = method if method in ("GET", "DELETE", "HEAD") else str(message.get("method", "answer"))
        key = "resume" if resume else key
        if key == "tools/list" and (message.get("params") or {}).get("cursor") == "2":
            key = "tools/list#2"
        self.seen.append(key)
        if key == "answer":
            self.answered.set()
        if key in self.garbage:
            writer.write(self.garbage[key])
            await writer.drain()
            return
        if key == "form":
            token = b'{"access_token": "exchanged", "token_type": "Bearer", "expires_in": 300}'
            writer.write(b"HTTP/1.1 200 OK\r\n" + _JSON + b"Content-Length: %d\r\n\r\n" % len(token) + token)
        elif key == "resume":  # the answer to the call whose stream ended after its priming event
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                         + _event({"jsonrpc": "2.0", "id": self._primed, "result": _result({"method": "tools/call"})}))
        elif method == "GET":
            await self._get(writer)
        elif method == "DELETE" or "id" not in message:
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif self.legacy:
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await self._legacy_stream.put(_event({"jsonrpc": "2.0", "id": message["id"], "result": _result(message)}))
        elif self.sse and message["method"] != "initialize":
            await self._sse_answer(message, writer)
        else:
            answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": _result(message)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\n" + _JSON + b"Mcp-Session-Id: " + self.session_id + b"\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(answer) + answer)
        await writer.drain()

    async def _get(self, writer: asyncio.StreamWriter) -> None:
        if not self.legacy:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        stream: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._legacy_stream = stream  # the latest session's stream carries the answers
        self._streams.append(stream)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                     b"event: endpoint\ndata: " + self.endpoint + b"\n\n")
        while (chunk := await stream.get()) is not None:
            writer.write(chunk)
            await writer.drain()

    async def _sse_answer(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        if message["method"] == "tools/call" and self.resumable:
            self._primed = message["id"]
            writer.write(b"id: p-1\nretry: 10\ndata:\n\n")  # and the stream ends: resumed with Last-Event-ID
            return
        if message["method"] == "tools/call" and message["params"]["name"] == "ask":
            writer.write(_event(ROOTS))  # a server→client request before the answer: its answer is POSTed
            await writer.drain()
            await self.answered.wait()
        writer.write(_event({"jsonrpc": "2.0", "id": message["id"], "result": _result(message)}))


def _event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(message).encode() + b"\n\n"


def _result(message: dict[str, Any]) -> dict[str, Any]:
    method, params = message["method"], message.get("params") or {}
    if method == "initialize":
        return INIT_RESULT
    if method == "tools/list":
        tools, cursor = PAGES[params.get("cursor")]
        return {"tools": tools, **({"nextCursor": cursor} if cursor else {})}
    if method == "resources/read":
        return {"contents": [{"uri": params["uri"], "text": "r"}]}
    if method == "resources/list":
        return {"resources": [{"uri": "file:///r", "name": "r"}]}
    if method == "prompts/get":
        return {"messages": []}
    if method == "prompts/list":
        return {"prompts": [{"name": "p"}]}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": "ok"}]}
    return {}


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bool, bytes]:
    """The request's method, whether it resumes a stream (Last-Event-ID) and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length") or 0)
    body = await reader.readexactly(length) if length else b""
    return lines[0].split(" ", 1)[0], "last-event-id" in headers, body


@asynccontextmanager
async def garbage_upstream(upstream: GarbageUpstream) -> AsyncIterator[GarbageUpstream]:
    handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        try:
            await upstream.handle(reader, writer)
        finally:
            handlers.pop(task, None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream.url = f"http://127.0.0.1:{port}/{'sse' if upstream.legacy else 'mcp'}"
    try:
        yield upstream
    finally:
        server.close()
        upstream.stop()
        for writer in handlers.values():
            writer.transport.close()  # a connection waiting for a request reads its end
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
