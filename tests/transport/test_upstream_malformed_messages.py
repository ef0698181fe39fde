"""An upstream's message whose JSON-RPC envelope is broken (`method` not a string, `params` not an object, `jsonrpc`
not "2.0" or missing, a `result` or `error` beside its `method`) never reaches the agent: passed on, the SDK client
failed the whole call it came on ("Failed to parse SSE message"), losing the upstream's valid answer. Such a message
is dropped (WARNING); one carrying a usable id is answered Invalid Request, so the upstream does not wait for an
answer that will never come."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config.load import allow_all_policies
from gateway.server_messages import envelope_flaw
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_post_only_mcp

TOKEN = "ghp_" + "m4Lf" * 9  # in a dropped message's params: the gateway's own log must not repeat it
MALFORMED: list[Any] = [
    {"jsonrpc": "2.0", "id": 5, "method": 5},
    {"jsonrpc": "2.0", "method": ["notifications/message"]},
    {"jsonrpc": "2.0", "id": 6},
    {"jsonrpc": "2.0", "method": "notifications/progress", "params": [1]},
    {"jsonrpc": "2.0", "method": "notifications/message", "params": "x"},
    {"jsonrpc": "2.0", "id": 7, "method": "ping", "params": [1]},
    {"jsonrpc": "1.0", "method": "notifications/message", "params": {"level": "info", "data": f"v1 {TOKEN}"}},
    {"method": "notifications/message", "params": {"level": "info", "data": "no version"}},
    {"jsonrpc": "2.0", "id": 9, "method": "ping", "error": {"code": 1, "message": "a request and an error"}},
    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "and a result"},
     "result": {}},
]
GOOD_LOG = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "ok"}}
INIT_RESULT = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "logging": {}},
               "serverInfo": {"name": "odd", "version": "1"}}
TOOLS = {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}

# The same upstream over stdio: tools/call 't' is answered after the malformed lines and one good log line.
CHILD = r'''
import json, sys
malformed = json.loads(sys.argv[1])
def write(message):
    sys.stdout.write(json.dumps(message) + "\n"); sys.stdout.flush()
for raw in sys.stdin:
    message = json.loads(raw)
    if "method" not in message or "id" not in message:
        continue
    if message["method"] == "initialize":
        write({"jsonrpc": "2.0", "id": message["id"], "result": json.loads(sys.argv[2])})
    elif message["method"] == "tools/list":
        write({"jsonrpc": "2.0", "id": message["id"], "result": json.loads(sys.argv[3])})
    elif message["method"] == "tools/call":
        for item in malformed:
            write(item)
        write(json.loads(sys.argv[4]))
        write({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})
    else:
        write({"jsonrpc": "2.0", "id": message["id"], "result": {}})
'''


@asynccontextmanager
async def http_upstream(answers: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A streamable HTTP upstream answering tools/call on an SSE stream: the malformed messages, a good log line,
    then the answer. Whatever responses the gateway POSTs back are kept in `answers`."""
    async def post(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        if "method" not in message:
            answers.append(message)
            return web.Response(status=202)
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] != "tools/call":
            result = INIT_RESULT if message["method"] == "initialize" else TOOLS
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for item in [*MALFORMED, GOOD_LOG, {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}]:
            await response.write(b"event: message\ndata: " + json.dumps(item).encode() + b"\n\n")
        return response

    async with run_post_only_mcp(post) as url:
        yield url


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_malformed_upstream_message_does_not_fail_the_call(start_gateway: Any, transport: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    answers: list[dict[str, Any]] = []
    async with http_upstream(answers) as url:
        upstream: dict[str, Any] = {"name": "odd", "url": url} if transport == "http" else {
            "name": "odd", "command": [sys.executable, "-c", CHILD, json.dumps(MALFORMED), json.dumps(INIT_RESULT),
                                       json.dumps(TOOLS), json.dumps(GOOD_LOG)]}
        gw = await start_gateway({"identity": {"mode": "anonymous"}, "upstreams": [upstream],
                                  "policies": {"dir": str(allow_all_policies())},
                                  "decision_log": {"path": str(Path("/dev/null"))}})
        logs: list[Any] = []

        async def on_log(params: Any) -> None:
            logs.append(params.data)

        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            result = await asyncio.wait_for(client.call_tool("odd__t", {}), 20)
            assert result.is_error is False
            assert logs == ["ok"]  # the good line after them still came, nothing else did
        if transport == "http":  # the malformed request with an id is told so instead of awaiting an answer
            async with asyncio.timeout(10):
                while not any(a.get("id") == 7 for a in answers):
                    await asyncio.sleep(0.02)  # polling what the upstream was sent, bounded by the timeout
            refused = next(a for a in answers if a.get("id") == 7)
            assert refused["error"]["code"] == -32600
    assert "malformed" in caplog.text
    assert TOKEN not in caplog.text  # what an upstream sends may hold its secrets: the warning names the flaw only


def test_params_null_is_taken_as_none() -> None:
    # Not JSON-RPC, but the SDK's client reads it as no params, and serializers that write absent fields as null
    # send it (`notifications/tools/list_changed` among them): dropping it would lose such a server's notices.
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": None}
    assert envelope_flaw(changed) is None
    assert envelope_flaw({**changed, "params": []}) == "its params are not an object"
