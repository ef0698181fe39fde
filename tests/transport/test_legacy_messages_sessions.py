"""POST /messages (legacy HTTP+SSE) takes only legacy SSE sessions, and refuses a request whose id is
still in flight as POST /mcp does (real gateway and SDK server; raw HTTP, since no SDK client sends
such requests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.feature_server import FeatureState, feature_server
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[tuple[Any, FeatureState]]:
    server, state = feature_server()
    async with run_http_server(server) as url:
        yield await start_gateway({"upstreams": [{"name": "feat", "url": url}], "identity": ANON,
                                   "policies": {"dir": str(permissive_policies)}}), state


async def _messages_url(gw: Any, stream: aiohttp.ClientResponse) -> str:
    """The session's /messages URL, from the `endpoint` event a legacy /sse stream opens with."""
    async for line in stream.content:
        if line.startswith(b"data: /messages"):
            return str(gw.url + line[6:].decode().strip())
    raise AssertionError("the /sse stream ended before its endpoint event")


def call(request_id: int, tag: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "overlap", "arguments": {"tag": tag, "group": "g", "parties": 2}}}


async def sse_messages(stream: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    async for line in stream:
        if line.startswith(b"data: {") and "id" in (message := json.loads(line[6:])):
            yield message  # answers only (the tool's log lines come on the stream too)


async def test_messages_refuses_a_streamable_http_session(env: tuple[Any, FeatureState]) -> None:
    gw, _ = env
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.mcp}/feat", json=init, headers=JSON) as resp:
            assert resp.status == 200
            session_id = resp.headers["Mcp-Session-Id"]
        async with http.post(f"{gw.url}/messages?session_id={session_id}", json=call(2, "A"), headers=JSON) as resp:
            body = await resp.json()
        # (on the old code: 202, the call ran and its answer went to the session's GET stream)
        assert resp.status == 404 and body["error"]["data"]["reason"] == "session_not_found", body


async def test_messages_refuses_an_id_in_flight(env: tuple[Any, FeatureState]) -> None:
    gw, state = env
    async with aiohttp.ClientSession() as http, \
            http.get(f"{gw.url}/sse/feat", headers={"Accept": "text/event-stream"}) as stream:
        endpoint = await _messages_url(gw, stream)
        messages = sse_messages(stream.content)
        async with http.post(endpoint, json=call(5, "A"), headers=JSON) as resp:
            assert resp.status == 202
        await eventually(lambda: state.arrived.get("g") == 1)
        async with http.post(endpoint, json=call(5, "again"), headers=JSON) as resp:
            body = await resp.json(content_type=None)
        assert resp.status == 400 and body["error"]["data"]["reason"] == "invalid_request", body
        async with http.post(endpoint, json=call(6, "B"), headers=JSON) as resp:
            assert resp.status == 202
        answers = {}
        async for message in messages:
            answers[message["id"]] = message["result"]["content"][0]["text"]
            if len(answers) == 2:
                break
        assert answers == {5: "A", 6: "B"}


@pytest.mark.parametrize("query", ["", "?session_id=", "?other=1"])
async def test_messages_without_a_session_id_is_session_required(env: tuple[Any, FeatureState], query: str) -> None:
    # As POST /mcp without Mcp-Session-Id (and the SDK's own SSE server: 400 "session_id is required"); it was
    # the 404 of an unknown session.
    gw, _ = env
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/messages{query}", json=call(2, "A"), headers=JSON) as resp:
            body = await resp.json()
    assert resp.status == 400 and body["error"]["data"]["reason"] == "session_required", body
    assert "session_id" in body["error"]["message"]


@pytest.mark.parametrize("query", ["?session_id=nope", ""])
@pytest.mark.parametrize(("sent", "answered"), [(7, 7), ("r-1", "r-1"), (True, None), ({"x": 1}, None)])
async def test_a_refused_session_answers_the_request_id(env: tuple[Any, FeatureState], query: str, sent: Any,
                                                        answered: Any) -> None:
    # As POST /mcp answers session_not_found / session_required: with the request's id when the body parses and
    # its id is valid, never echoing an invalid one (on the old code: null, the session was looked up first).
    gw, _ = env
    message = {**call(1, "A"), "id": sent}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/messages{query}", json=message, headers=JSON) as resp:
            body = await resp.json()
    expected = ("session_not_found", 404) if query else ("session_required", 400)
    if answered is None:  # an invalid id is the message's own fault, and answered null
        expected = ("invalid_request", 400)
    assert (body["error"]["data"]["reason"], resp.status) == expected, body
    assert "id" in body and body["id"] == answered, body


async def test_a_refused_session_with_an_unreadable_body_answers_null(env: tuple[Any, FeatureState]) -> None:
    gw, _ = env
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/messages?session_id=nope", data=b'{"id": 3, ', headers=JSON) as resp:
            body = await resp.json()
    assert resp.status == 400 and body["error"]["data"]["reason"] == "parse_error" and body["id"] is None, body


async def test_mcp_refuses_a_legacy_sse_session(env: tuple[Any, FeatureState]) -> None:
    """The converse of the first test: a legacy session's id (it travels in its /messages URL) named on /mcp was
    served there: a GET stream opened with it took the answers of the calls the legacy client posted (they never
    came on its /sse stream), and a DELETE ended the legacy session under its client."""
    gw, _ = env
    async with aiohttp.ClientSession() as http, \
            http.get(f"{gw.url}/sse/feat", headers={"Accept": "text/event-stream"}) as stream:
        endpoint = await _messages_url(gw, stream)
        session_id = endpoint.rsplit("session_id=", 1)[1]
        named = {**JSON, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        for method, body in (("POST", ping), ("GET", None), ("DELETE", None)):
            headers = {**named, "Accept": "text/event-stream"} if method == "GET" else named
            async with http.request(method, f"{gw.mcp}/feat", json=body, headers=headers) as resp:
                reply = await resp.json(content_type=None)
            # (on the old code: 200 for each, the GET a stream, the DELETE the end of the legacy session)
            assert resp.status == 404 and reply["error"]["data"]["reason"] == "session_not_found", (method, reply)
        messages = sse_messages(stream.content)
        async with http.post(endpoint, json={**ping, "id": 4}, headers=JSON) as resp:
            assert resp.status == 202  # the legacy session lives on, its answers on its own stream
        assert await anext(messages) == {"jsonrpc": "2.0", "id": 4, "result": {}}


async def test_a_legacy_session_keeps_no_replay_of_its_answers(env: tuple[Any, FeatureState]) -> None:
    # 2024-11-05 has no resumption (no event ids, no Last-Event-ID), yet every answer on a legacy stream was kept
    # in the session's replay buffer too: its last 256 answers, tool results and resources of up to 16 MiB each,
    # stayed in memory for every legacy session until it ended.
    gw, _ = env
    principal = await gw.gateway.parts.identifier.identify({}, None)
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/sse/feat") as stream:
        url = await _messages_url(gw, stream)
        session = gw.gateway.sessions.get_legacy(url.rsplit("=", 1)[1], principal)
        answers = sse_messages(stream.content)
        for request_id in range(1, 4):
            echo = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"value": "x" * 100_000}}}
            async with http.post(url, json=echo, headers=JSON) as resp:
                assert resp.status == 202
            answer = await anext(answers)
            assert answer["result"]["content"][0]["text"] == "x" * 100_000
        assert session.event_seq >= 3 and len(session.replay) == 0
