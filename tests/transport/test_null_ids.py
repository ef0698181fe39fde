"""`"id": null` names no request (MCP, every revision since 2025-03-26: ids MUST be a string or an integer, MUST NOT
be null; a notification has no `id` member at all). From the agent such a message is answered -32600 Invalid
Request with id null, on every endpoint and in a batch, and reaches no upstream; from an upstream, a server→client
request with id null is dropped (no answer can name it) and never reaches the client, and a response with id null
completes no call in flight (real gateway, hand-written streamable HTTP and legacy SSE upstreams, a stdio child, an
SDK client)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.load import allow_all_policies
from gateway.server_messages import envelope_flaw
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_aiohttp, run_post_only_mcp

JSON = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT_RESULT = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "logging": {}},
               "serverInfo": {"name": "rec", "version": "1"}}
TOOLS = {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}
NULL_CALL = {"jsonrpc": "2.0", "id": None, "method": "tools/call", "params": {"name": "rec__t", "arguments": {}}}
NULL_NOTICE = {"jsonrpc": "2.0", "id": None, "method": "notifications/roots/list_changed"}
# What the upstream sends on its tools/call stream before asking the one good question: requests with id null (a
# client answering them would answer no request). The stdio child sends a response with id null too (it answers
# no call in flight; on an HTTP request's own stream any response is taken as that request's, checked: not here).
NULL_REQUESTS: list[Any] = [{"jsonrpc": "2.0", "id": None, "method": "roots/list"},
                            {"jsonrpc": "2.0", "id": None, "method": "ping"}]
NULL_RESPONSE = {"jsonrpc": "2.0", "id": None, "result": {"content": [{"type": "text", "text": "not the answer"}]}}
GOOD_ASK = {"jsonrpc": "2.0", "id": "good", "method": "roots/list"}


@asynccontextmanager
async def recording_upstream(seen: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A streamable HTTP upstream that keeps every message it is sent. tools/call answers on an SSE stream: the
    id-null messages, then GOOD_ASK; once that is answered, the call's result names the answers it was sent."""
    good_answered = asyncio.Event()

    async def post(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        seen.append(message)
        if "method" not in message or "id" not in message:
            if message.get("id") == "good":
                good_answered.set()
            return web.Response(status=202)
        if message["method"] != "tools/call":
            result = INIT_RESULT if message["method"] == "initialize" else TOOLS if message[
                "method"] == "tools/list" else {}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for item in [*NULL_REQUESTS, GOOD_ASK]:
            await response.write(b"event: message\ndata: " + json.dumps(item).encode() + b"\n\n")
        await asyncio.wait_for(good_answered.wait(), 10)
        answered = [m["id"] for m in seen if "method" not in m]
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text",
                                                                                  "text": json.dumps(answered)}]}}
        await response.write(b"event: message\ndata: " + json.dumps(answer).encode() + b"\n\n")
        return response

    async with run_post_only_mcp(post) as url:
        yield url


@asynccontextmanager
async def legacy_sse_upstream() -> AsyncIterator[str]:
    """The same upstream over the 2024-11-05 HTTP+SSE transport (all its messages on the one GET stream)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answered: list[Any] = []
    call: list[Any] = []

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: endpoint\ndata: /messages?session=1\n\n")
        while True:
            item = await queue.get()
            await response.write(b"event: message\ndata: " + json.dumps(item).encode() + b"\n\n")

    async def post(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "method" not in message:
            answered.append(message.get("id"))
            if message.get("id") == "good":
                text = json.dumps(answered)
                queue.put_nowait({"jsonrpc": "2.0", "id": call[0], "result": {"content": [{"type": "text",
                                                                                           "text": text}]}})
        elif message["method"] == "tools/call":
            call.append(message["id"])
            for item in [*NULL_REQUESTS, NULL_RESPONSE, GOOD_ASK]:
                queue.put_nowait(item)
        elif "id" in message:
            result = INIT_RESULT if message["method"] == "initialize" else TOOLS if message[
                "method"] == "tools/list" else {}
            queue.put_nowait({"jsonrpc": "2.0", "id": message["id"], "result": result})
        return web.Response(status=202)

    app = web.Application()
    app.router.add_get("/sse", sse)
    app.router.add_post("/messages", post)
    async with run_aiohttp(app, shutdown_timeout=1) as base:
        yield f"{base}/sse"


# The same upstream over stdio: its answers are the lines it read that carry no method.
CHILD = r'''
import json, sys
init, tools, nulls, ask = (json.loads(a) for a in sys.argv[1:5])
def write(message):
    sys.stdout.write(json.dumps(message) + "\n"); sys.stdout.flush()
answered, call = [], None
for raw in sys.stdin:
    message = json.loads(raw)
    if "method" not in message:
        answered.append(message.get("id"))
        if message.get("id") == "good" and call is not None:
            write({"jsonrpc": "2.0", "id": call, "result": {"content": [{"type": "text",
                                                                          "text": json.dumps(answered)}]}})
        continue
    if "id" not in message:
        continue
    if message["method"] == "initialize":
        write({"jsonrpc": "2.0", "id": message["id"], "result": init})
    elif message["method"] == "tools/list":
        write({"jsonrpc": "2.0", "id": message["id"], "result": tools})
    elif message["method"] == "tools/call":
        call = message["id"]
        for item in nulls:
            write(item)
        write(ask)
    else:
        write({"jsonrpc": "2.0", "id": message["id"], "result": {}})
'''


async def _gateway(start_gateway: Any, upstream: dict[str, Any]) -> Any:
    return await start_gateway({"identity": {"mode": "anonymous"}, "upstreams": [upstream],
                                "policies": {"dir": str(allow_all_policies())},
                                "decision_log": {"path": str(Path("/dev/null"))}})


async def _post(http: aiohttp.ClientSession, url: str, body: Any,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers={**JSON, **(headers or {})}) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def _session(http: aiohttp.ClientSession, url: str, version: str = "2025-11-25") -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(url, data=json.dumps(init), headers=JSON) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["Mcp-Session-Id"]


async def _open_upstream(http: aiohttp.ClientSession, url: str, sid: str) -> None:
    """List the tools: the session's upstream session is open from here on (a notice would reach it)."""
    status, reply = await _post(http, url, {"jsonrpc": "2.0", "id": "open", "method": "tools/list"},
                                {"Mcp-Session-Id": sid})
    assert status == 200 and reply["result"]["tools"], reply


async def _notice_passes(http: aiohttp.ClientSession, url: str, sid: str, seen: list[dict[str, Any]]) -> None:
    """The same notice without an id does reach the upstream (forwarded before its 202), and it is the only one
    that did; no call with id null ran either."""
    valid = {key: value for key, value in NULL_NOTICE.items() if key != "id"}
    status, _ = await _post(http, url, valid, {"Mcp-Session-Id": sid})
    assert status == 202
    assert [m for m in seen if m.get("method") == NULL_NOTICE["method"]] == [valid]
    assert not [m for m in seen if m.get("method") == "tools/call"]


def _refused(reply: Any) -> None:
    assert reply["id"] is None and reply["error"]["code"] == -32600, reply
    assert reply["error"]["data"]["reason"] == "invalid_request", reply


@pytest.mark.parametrize("path", ["", "/rec"])
@pytest.mark.parametrize("message", [NULL_CALL, NULL_NOTICE], ids=["request", "notification"])
async def test_an_agent_message_with_id_null_is_invalid_request(start_gateway: Any, path: str,
                                                                message: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, aiohttp.ClientSession() as http:
        gw = await _gateway(start_gateway, {"name": "rec", "url": url})
        if path:
            message = {**message, "params": {**message.get("params", {}), "name": "t"}} if "params" in message \
                else message
        sid = await _session(http, gw.mcp + path)
        await _open_upstream(http, gw.mcp + path, sid)
        status, reply = await _post(http, gw.mcp + path, message, {"Mcp-Session-Id": sid})
        assert status == 400
        _refused(reply)
        # The stateless revision: no session, the request's envelope in its headers.
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}
        stateless = {**message, "params": {**message.get("params", {}), "_meta": meta}}
        headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": message["method"]}
        if message is not NULL_NOTICE and "name" in stateless["params"]:
            headers["Mcp-Name"] = stateless["params"]["name"]
        status, reply = await _post(http, gw.mcp + path, stateless, headers)
        assert status == 400
        _refused(reply)
        await _notice_passes(http, gw.mcp + path, sid, seen)


async def test_a_batch_member_with_id_null_is_invalid_request(start_gateway: Any) -> None:
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, aiohttp.ClientSession() as http:
        gw = await _gateway(start_gateway, {"name": "rec", "url": url})
        sid = await _session(http, gw.mcp, "2025-03-26")
        await _open_upstream(http, gw.mcp, sid)
        batch = [NULL_CALL, NULL_NOTICE, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
        status, replies = await _post(http, gw.mcp, batch, {"Mcp-Session-Id": sid})
        assert status == 200 and len(replies) == 3, replies
        refused = [r for r in replies if r["id"] is None]
        assert len(refused) == 2
        for reply in refused:
            _refused(reply)
        assert next(r for r in replies if r["id"] == 2)["result"] == {}
        await _notice_passes(http, gw.mcp, sid, seen)


async def test_legacy_messages_with_id_null_is_invalid_request(start_gateway: Any) -> None:
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, aiohttp.ClientSession() as http:
        gw = await _gateway(start_gateway, {"name": "rec", "url": url})
        async with http.get(f"{gw.url}/sse", headers={"Accept": "text/event-stream"}) as stream:
            endpoint = ""
            async for line in stream.content:
                if line.startswith(b"data: /messages"):
                    endpoint = gw.url + line[6:].decode().strip()
                    break
            for message in (NULL_CALL, NULL_NOTICE):
                status, reply = await _post(http, endpoint, message)
                assert status == 400
                _refused(reply)
    assert not [m for m in seen if m.get("method") in ("tools/call", NULL_NOTICE["method"])]


@pytest.mark.parametrize("transport", ["http", "sse", "stdio"])
async def test_an_upstream_message_with_id_null_reaches_no_one(start_gateway: Any, transport: str) -> None:
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, legacy_sse_upstream() as sse_url:
        upstream: dict[str, Any] = {"name": "rec", "url": url} if transport == "http" else {
            "name": "rec", "url": sse_url, "transport": "sse"} if transport == "sse" else {
            "name": "rec", "command": [sys.executable, "-c", CHILD, json.dumps(INIT_RESULT), json.dumps(TOOLS),
                                       json.dumps([*NULL_REQUESTS, NULL_RESPONSE]), json.dumps(GOOD_ASK)]}
        gw = await _gateway(start_gateway, upstream)
        asked: list[Any] = []

        async def on_roots(context: Any) -> Any:
            from mcp.types import ListRootsResult
            asked.append(context)
            return ListRootsResult(roots=[])

        async with sdk_client(gw.mcp, list_roots_callback=on_roots) as client:
            result = await asyncio.wait_for(client.call_tool("rec__t", {}), 20)
        # Only the good question reached the client, and only its answer went back (none with id null: the
        # gateway neither answered the null ping itself nor passed the client's answers on).
        assert result.is_error is False and json.loads(result.content[0].text) == ["good"], result
        assert len(asked) == 1


@pytest.mark.parametrize("message", [
    {"jsonrpc": "2.0", "id": None, "method": "roots/list"},
    {"jsonrpc": "2.0", "id": 1.5, "method": "roots/list"},
    {"jsonrpc": "2.0", "id": True, "method": "ping"},
])
def test_an_upstream_request_without_a_usable_id_is_malformed(message: dict[str, Any]) -> None:
    assert envelope_flaw(message) == "its id is not a string or an integer"
    assert envelope_flaw({**message, "id": "x"}) is None
