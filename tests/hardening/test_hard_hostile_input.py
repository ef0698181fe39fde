"""Hostile input through a real gateway: each gets a clear error and nothing unallowed reaches the upstream.

Complements tests/core/test_http_edge.py and tests/core/test_jsonrpc.py (malformed JSON, batches, depth,
415/413, sessions, Origin/Host, protocol version): here the arguments that reach Cedar (huge strings and
arrays, deep nesting, numbers past Long), invalid Unicode smuggled through JSON escapes, notifications
posing as requests, duplicate ids in flight, and CR/LF in header values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.hardening.conftest import RawClient, Recorder, one_shape_policies, reason, recording_server
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio


class Env:
    def __init__(self, gw: Any, recorder: Recorder, client: RawClient) -> None:
        self.gw, self.recorder, self.client = gw, recorder, client


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    recorder = Recorder(release=asyncio.Event())
    async with run_http_server(recording_server(recorder)) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "rec", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
        })
        client = RawClient(http, gw.mcp)
        await client.initialize()
        yield Env(gw, recorder, client)
        recorder.release.set()  # type: ignore[union-attr]


async def test_the_one_allowed_shape_is_forwarded(env: Env) -> None:
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget"})
    assert status == 200 and body["result"]["content"][0]["text"] == "ran lookup"
    status, _, body = await env.client.call("rec__lookup", {"sku": "gadget"})
    assert status == 200 and reason(body) == "unknown_tool"
    status, _, body = await env.client.call("rec__transfer", {"sku": "widget"})
    assert status == 200 and reason(body) == "unknown_tool"
    assert env.recorder.calls == [("lookup", {"sku": "widget"})]


@pytest.mark.parametrize(("label", "extra"), [
    ("huge string", {"note": "x" * 200_000}),
    ("huge array", {"items": list(range(20_000))}),
    ("wide object", {"filters": {f"k{i}": i for i in range(5_000)}}),
    ("deep nesting", {"tree": json.loads('{"a":' * 40 + "1" + "}" * 40)}),
])
async def test_oversized_arguments_are_cut_for_cedar_and_the_cut_denies(env: Env, label: str, extra: dict[str, Any]
                                                                        ) -> None:
    # The policy forbids truncated arguments: what Cedar could not see in full is never forwarded.
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget", **extra})
    assert status == 200, (label, body)
    assert reason(body) == "unknown_tool", (label, body)
    assert env.recorder.calls == [], label


async def test_a_huge_sku_is_denied_and_a_huge_key_is_decided(env: Env) -> None:
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget" + "x" * 10_000})
    assert status == 200 and reason(body) == "unknown_tool"
    assert env.recorder.calls == []
    # Key names are not cut (Cedar sees them whole; the body limit bounds them): decided, not crashed.
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget", "k" * 50_000: 1})
    assert status == 200 and "result" in body, body
    assert [name for name, _ in env.recorder.calls] == ["lookup"]


@pytest.mark.parametrize("value", [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, 1e308, -1e-308, 0.1])
async def test_numbers_at_and_past_long_limits_are_decided_not_crashed(env: Env, value: Any) -> None:
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget", "n": value})
    assert status == 200, body
    assert "result" in body, body  # every number has a Cedar form; the sku decides
    status, _, body = await env.client.call("rec__lookup", {"sku": value})
    assert status == 200 and reason(body) == "unknown_tool"
    assert [c for c in env.recorder.calls if c[1].get("sku") != "widget"] == []


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"123456789e999"])
async def test_numbers_past_double_range_are_a_parse_error_and_not_forwarded(env: Env, number: bytes) -> None:
    # Valid JSON, but no double holds it: read as infinity it reached the upstream, then broke the digest.
    raw = (b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__lookup",'
           b'"arguments":{"sku":"widget","n":' + number + b'}}}')
    status, _, body = await env.client.post(raw=raw)
    assert status == 400 and reason(body) == "parse_error", body
    assert env.recorder.calls == []


@pytest.mark.parametrize("raw", [
    # A lone surrogate can only arrive as a JSON escape: it is valid JSON text but not Unicode.
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__lookup",'
    b'"arguments":{"sku":"widget","note":"\\ud800"}}}',
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__lookup\\udfff",'
    b'"arguments":{"sku":"widget"}}}',
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__lookup",'
    b'"arguments":{"\\udc00":1,"sku":"widget"}}}',
])
async def test_lone_surrogates_are_a_parse_error(env: Env, raw: bytes) -> None:
    status, _, body = await env.client.post(raw=raw)
    assert status == 400 and reason(body) == "parse_error", body
    assert env.recorder.calls == []


async def test_valid_surrogate_pairs_are_ordinary_text(env: Env) -> None:
    raw = (b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__lookup",'
           b'"arguments":{"sku":"widget","note":"\\ud83d\\ude00 \\u00e9"}}}')
    status, _, body = await env.client.post(raw=raw)
    assert status == 200 and "result" in body, body
    assert env.recorder.calls == [("lookup", {"sku": "widget", "note": "\U0001F600 \u00e9"})]


async def test_a_tools_call_posing_as_a_notification_is_refused_and_not_forwarded(env: Env) -> None:
    # Connect the session to the upstream first, so a forwarded notification would have somewhere to go.
    assert (await env.client.call("rec__lookup", {"sku": "widget"}))[0] == 200
    for params in ({"name": "rec__transfer", "arguments": {"account": "x", "amount": 5}},
                   {"name": "transfer", "arguments": {"account": "x", "amount": 5}}):
        status, _, body = await env.client.post({"jsonrpc": "2.0", "method": "tools/call", "params": params})
        assert status == 400 and reason(body) == "invalid_request", body
    # A real notification is still accepted.
    status, _, _ = await env.client.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert status == 202
    assert env.recorder.calls == [("lookup", {"sku": "widget"})]


async def test_duplicate_id_in_flight_on_one_session_is_refused(env: Env) -> None:
    first = asyncio.create_task(env.client.call("rec__slow", {}, request_id=7))
    await asyncio.wait_for(env.recorder.slow_started.wait(), 10)
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget"}, request_id=7)
    assert status == 400 and reason(body) == "invalid_request", body
    assert body["id"] == 7
    env.recorder.release.set()  # type: ignore[union-attr]
    status, _, body = await asyncio.wait_for(first, 10)
    assert status == 200 and body["id"] == 7 and body["result"]["content"][0]["text"] == "ran slow"
    # Once the first answer is out, the id may be used again (ids must be unique among calls in flight).
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget"}, request_id=7)
    assert status == 200 and "result" in body
    assert env.recorder.calls == [("slow", {}), ("lookup", {"sku": "widget"})]


async def test_missing_id_and_null_id(env: Env) -> None:
    status, _, body = await env.client.post({"jsonrpc": "2.0", "id": None, "method": "tools/call",
                                             "params": {"name": "rec__lookup", "arguments": {"sku": "widget"}}})
    assert status == 400 and reason(body) == "invalid_request"
    assert env.recorder.calls == []


async def _raw_http(port: int, head: bytes, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("header", [
    b"Mcp-Session-Id: abc\rX-Injected: 1\r\n",             # bare CR inside a value
    b"Mcp-Session-Id: abc\nX-Injected: 1\r\n",             # bare LF splitting a line
    b"Authorization: Bearer x\r\n X-Injected: folded\r\n",  # obsolete line folding
    b"Mcp-Session-Id: abc\x00def\r\n",                      # NUL in a value
])
async def test_header_injection_is_refused_by_the_parser(env: Env, header: bytes) -> None:
    port = int(env.gw.url.rsplit(":", 1)[1])
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                       "params": {"name": "rec__lookup", "arguments": {"sku": "widget"}}}).encode()
    head = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n" + header)
    answer = await _raw_http(port, head, body)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 404), answer[:300]  # malformed header → 400; an odd but legal id → unknown session
    response_head = answer.split(b"\r\n\r\n", 1)[0]
    assert b"X-Injected" not in response_head  # (aiohttp quotes the bad line in its text/plain body)
    assert env.recorder.calls == []


async def test_session_id_is_never_reflected_into_headers(env: Env) -> None:
    status, headers, body = await env.client.post({"jsonrpc": "2.0", "id": 4, "method": "ping"},
                                                  headers={"Mcp-Session-Id": "evil value; Set-Cookie: a=b"})
    assert status == 404 and reason(body) == "session_not_found"
    assert "Set-Cookie" not in headers and "evil" not in json.dumps(body)


@pytest.mark.parametrize("meta", ["x", 5, [1], {"progressToken": {"a": 1}}, {"progressToken": [1]}])
async def test_a_malformed_meta_is_invalid_request_and_not_forwarded(env: Env, meta: Any) -> None:
    # `_meta` that is no object, or a progressToken that is no string or number, used to reach the
    # forwarder (internal_error) or the progress routes (an unhandled TypeError, HTTP 500).
    status, _, body = await env.client.post({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
                                             "params": {"name": "rec__lookup", "arguments": {"sku": "widget"},
                                                        "_meta": meta}})
    assert status == 400 and reason(body) == "invalid_request", body
    assert env.recorder.calls == []
    # A well-formed _meta (a null one too) is still an ordinary call.
    for good in (None, {"progressToken": "p-1"}, {"progressToken": 3}):
        status, _, body = await env.client.post({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
                                                 "params": {"name": "rec__lookup", "arguments": {"sku": "widget"},
                                                            "_meta": good}})
        assert status == 200 and "result" in body, (good, body)
    assert len(env.recorder.calls) == 3


async def test_an_internal_error_is_logged_at_error_level_without_internals_on_the_wire(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # docs/errors.md: unknown failures answer internal_error with no internals, "details are logged".
    # They were logged at DEBUG only, so a production gateway (INFO) answered errors nobody could see.
    async def broken(inbound: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    env.gw.gateway.endpoint.router.dispatch = broken  # fault injection: a bug anywhere behind the edge
    caplog.set_level("INFO", logger="customs.http")
    status, _, body = await env.client.call("rec__lookup", {"sku": "widget"})
    assert status == 200 and reason(body) == "internal_error", body
    assert "secret-internal-detail" not in json.dumps(body)
    logged = [r for r in caplog.records if r.name == "customs.http" and r.levelname == "ERROR"]
    assert logged and logged[0].exc_info and "secret-internal-detail" in str(logged[0].exc_info[1])


async def test_an_internal_error_on_legacy_sse_is_logged_at_error_level(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # The same bug behind legacy /messages was answered internal_error on the SSE stream with no log line.
    async def broken(inbound: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    env.gw.gateway.endpoint.router.dispatch = broken
    caplog.set_level("INFO", logger="customs.http")
    async with Client(sse_client(f"{env.gw.url}/sse"), mode="legacy") as legacy:
        with pytest.raises(Exception) as info:
            await legacy.call_tool("rec__lookup", {"sku": "widget"})
    assert "secret-internal-detail" not in str(info.value)
    logged = [r for r in caplog.records if r.name.startswith("customs.http") and r.levelname == "ERROR"]
    assert logged and logged[0].exc_info and "secret-internal-detail" in str(logged[0].exc_info[1])
