"""JSON-RPC framing an acceptance tester tries through the gateway (real gateway, a hand-written recording upstream):
duplicate ids in one 2025-03-26 batch are refused before anything runs, and an agent's answer to a server→client
request whose `error` is no JSON-RPC error object, or whose `result` is no object, is refused (400) instead of passed on
to choke the upstream (the SDK's servers cannot read either)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config.load import allow_all_policies
from tests.transport.test_null_ids import JSON, _post, recording_upstream


async def _gateway(start_gateway: Any, url: str) -> Any:
    return await start_gateway({"identity": {"mode": "anonymous"}, "upstreams": [{"name": "rec", "url": url}],
                                "policies": {"dir": str(allow_all_policies())},
                                "decision_log": {"path": str(Path("/dev/null"))}})


async def _session(http: aiohttp.ClientSession, url: str, version: str, capabilities: dict[str, Any]) -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": capabilities,
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(url, data=json.dumps(init), headers=JSON) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["Mcp-Session-Id"]


async def test_duplicate_ids_in_a_batch_are_refused_before_anything_runs(start_gateway: Any) -> None:
    """MCP: an id MUST NOT be used twice in a session; two answers with one id cannot be told apart. The later
    members with an id already in the batch are refused, whatever the first is (a `ping` answered at once left
    the id free, and a `tools/call` with the same id ran: the tool acted, its answer indistinguishable)."""
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, aiohttp.ClientSession() as http:
        gw = await _gateway(start_gateway, url)
        sid = await _session(http, gw.mcp, "2025-03-26", {})
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rec__t", "arguments": {}}}
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, call, {"jsonrpc": "2.0", "id": "1", "method": "ping"},
                 {**call, "id": "1"}]  # (1 and "1" are two ids)
        status, replies = await _post(http, gw.mcp, batch, {"Mcp-Session-Id": sid})
        assert status == 200 and len(replies) == 4, replies
        ok = [r for r in replies if "result" in r]
        refused = [r for r in replies if "error" in r]
        assert sorted(map(repr, (r["id"] for r in ok))) == ["'1'", "1"] and all(r["result"] == {} for r in ok), replies
        assert sorted(map(repr, (r["id"] for r in refused))) == ["'1'", "1"], replies
        assert all(r["error"]["data"]["reason"] == "invalid_request" and "batch" in r["error"]["message"]
                   for r in refused), refused
    assert not [m for m in seen if m.get("method") == "tools/call"]


async def test_a_malformed_answer_is_refused_and_can_be_sent_again(start_gateway: Any) -> None:
    seen: list[dict[str, Any]] = []
    async with recording_upstream(seen) as url, aiohttp.ClientSession() as http:
        gw = await _gateway(start_gateway, url)
        sid = await _session(http, gw.mcp, "2025-11-25", {"roots": {}})
        headers = {**JSON, "Mcp-Session-Id": sid}
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "rec__t", "arguments": {}}}
        async with http.post(gw.mcp, data=json.dumps(call), headers=headers) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            answer: dict[str, Any] | None = None

            async def read() -> None:
                nonlocal answer
                async for line in stream.content:
                    if not line.startswith(b"data: "):
                        continue
                    message = json.loads(line[6:])
                    if message.get("method") == "roots/list":
                        asked = message["id"]
                        for bad in ({"error": "x"}, {"error": {"code": "1", "message": "m"}}, {"error": {"code": 1}},
                                    {"error": {"code": True, "message": "m"}}, {"result": 5}, {"result": [1]}):
                            status, reply = await _post(http, gw.mcp, {"jsonrpc": "2.0", "id": asked, **bad},
                                                        {"Mcp-Session-Id": sid})
                            assert status == 400 and reply["error"]["code"] == -32600 and reply["id"] is None, reply
                        status, _ = await _post(http, gw.mcp, {"jsonrpc": "2.0", "id": asked, "result": {"roots": []}},
                                                {"Mcp-Session-Id": sid})
                        assert status == 202
                    elif message.get("id") == 9:
                        answer = message
                        return
            await asyncio.wait_for(read(), 20)
        assert answer is not None and json.loads(answer["result"]["content"][0]["text"]) == ["good"], answer
    assert [m for m in seen if m.get("id") == "good"] == [{"jsonrpc": "2.0", "id": "good", "result": {"roots": []}}]
