"""The Streamable HTTP edge, raw: SSE event ids and resumption, GET stream takeover, GET/DELETE
version checks, unknown upstream paths, `initialize` under the stateless revision, and JSON-RPC
batches (2025-03-26 sessions only).

A real gateway in front of a real SDK server (tests.support.feature_server), spoken to with a plain
aiohttp client so every header, status and SSE id is visible.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.feature_server import feature_server
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
STREAM = {"Accept": "text/event-stream"}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def initialize(version: str = "2025-11-25") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def call(request_id: int, tool: str, arguments: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@pytest.fixture
async def gw(start_gateway, permissive_policies) -> AsyncIterator[Any]:
    server, _ = feature_server()
    async with run_http_server(server) as url:
        gateway = await start_gateway({"upstreams": [{"name": "features", "url": url}],
                                       "policies": {"dir": str(permissive_policies)}})
        gateway.features = f"{gateway.mcp}/features"
        yield gateway


async def open_session(http: aiohttp.ClientSession, url: str, version: str = "2025-11-25") -> str:
    async with http.post(url, json=initialize(version), headers=ACCEPT) as resp:
        assert resp.status == 200, await resp.text()
        sid = resp.headers["Mcp-Session-Id"]
    async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers={**ACCEPT, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 202
    return sid


async def read_events(resp: aiohttp.ClientResponse, count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """SSE events (id, message) until `count` were read, or (count None) until the stream ends."""
    out: list[tuple[str, dict[str, Any]]] = []
    event_id = ""
    async with asyncio.timeout(10):
        while count is None or len(out) < count:
            line = await resp.content.readline()
            if not line:
                assert count is None, f"stream ended after {len(out)} of {count} events"
                return out
            text = line.decode().rstrip("\n")
            if text.startswith("id: "):
                event_id = text[4:]
            elif text.startswith("data: "):
                out.append((event_id, json.loads(text[6:])))
    return out


async def streamed_call(http: aiohttp.ClientSession, url: str, sid: str, message: dict[str, Any]
                        ) -> list[tuple[str, dict[str, Any]]]:
    async with http.post(url, json=message, headers={**ACCEPT, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        return await read_events(resp)


async def plain_call(http: aiohttp.ClientSession, url: str, sid: str, message: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=message, headers={**ACCEPT, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        body: dict[str, Any] = await resp.json()
        return body


def reason(body: Any) -> str:
    return str(body["error"]["data"]["reason"])


async def test_event_ids_are_unique_in_a_session_and_name_their_stream(gw, http):
    sid = await open_session(http, gw.features)
    headers = {**STREAM, "Mcp-Session-Id": sid}
    async with http.get(gw.features, headers=headers) as stream:
        assert stream.status == 200
        first = await streamed_call(http, gw.features, sid, call(2, "progress", {"steps": 2}, token="p1"))
        await plain_call(http, gw.features, sid, call(3, "change_tools", {}))  # list_changed: on the GET stream
        [(get_id, changed)] = await read_events(stream, 1)
        second = await streamed_call(http, gw.features, sid, call(4, "progress", {"steps": 1}, token="p2"))
    assert changed["method"] == "notifications/tools/list_changed"
    post_ids = [event_id for event_id, _ in first + second]
    assert first[-1][1]["result"]["content"][0]["text"] == "done"
    all_ids = [get_id, *post_ids]
    assert len(set(all_ids)) == len(all_ids), all_ids
    streams = {event_id.rsplit("-", 1)[0] for event_id in all_ids}
    assert get_id.startswith("0-") and len(streams) == 3  # the GET stream and each POST stream: its own key
    assert {i.rsplit("-", 1)[0] for i, _ in first} != {i.rsplit("-", 1)[0] for i, _ in second}


async def test_last_event_id_of_a_post_stream_replays_the_rest_of_that_stream(gw, http):
    sid = await open_session(http, gw.features)
    events = await streamed_call(http, gw.features, sid, call(2, "progress", {"steps": 2}, token="p1"))
    assert len(events) == 5  # two progress, two log lines, the answer
    gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features").stream_event(
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "session stream only"}})
    async with http.get(gw.features, headers={**STREAM, "Mcp-Session-Id": sid,
                                              "Last-Event-ID": events[1][0]}) as resp:
        assert resp.status == 200
        replayed = await read_events(resp)  # ends: the call behind that stream is over
    assert replayed == events[2:]  # nothing from the GET stream, nothing before the given id


async def test_get_stream_resumes_with_its_own_ids(gw, http):
    sid = await open_session(http, gw.features)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features")
    note = {"jsonrpc": "2.0", "method": "notifications/message"}
    await streamed_call(http, gw.features, sid, call(2, "progress", {"steps": 1}, token="p1"))
    session.stream_event({**note, "params": {"n": 1}})
    headers = {**STREAM, "Mcp-Session-Id": sid}
    async with http.get(gw.features, headers={**headers, "Last-Event-ID": "0-0"}) as resp:
        [(first_id, first)] = await read_events(resp, 1)
    assert first["params"] == {"n": 1} and first_id.startswith("0-")
    session.stream_event({**note, "params": {"n": 2}})
    session.stream_event({**note, "params": {"n": 3}})
    async with http.get(gw.features, headers={**headers, "Last-Event-ID": first_id}) as resp:
        received = await read_events(resp, 2)
    assert [m["params"]["n"] for _, m in received] == [2, 3]


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])  # superscript two; Arabic-Indic three
async def test_a_last_event_id_with_digits_past_ascii_names_no_event(gw, http, digit):
    # str.isdigit() takes both: int() then raised on '²' (a text/plain 500 and an ERROR traceback) and read '٣' as 3,
    # replaying events the client never named. The gateway's ids are ASCII digits only: these name none of them.
    sid = await open_session(http, gw.features)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features")
    note = {"jsonrpc": "2.0", "method": "notifications/message"}
    for n in range(1, 6):
        session.stream_event({**note, "params": {"n": n}})
    async with http.get(gw.features, headers={**STREAM, "Mcp-Session-Id": sid, "Last-Event-ID": f"0-{digit}"}) as resp:
        assert resp.status == 200, await resp.text()
        session.stream_event({**note, "params": {"n": 6}})
        [(_, first)] = await read_events(resp, 1)
    assert first["params"] == {"n": 6}  # nothing replayed, as for any id the gateway did not issue


async def test_a_new_get_replaces_the_open_stream_at_once(gw, http):
    sid = await open_session(http, gw.features)
    headers = {**STREAM, "Mcp-Session-Id": sid}
    # The first stream stays open on the client side: to the gateway it looks like a dead client's stream.
    async with http.get(gw.features, headers=headers) as old:
        assert old.status == 200
        async with http.get(gw.features, headers=headers) as new:
            assert new.status == 200, await new.text()
            async with asyncio.timeout(5):
                assert await old.content.read() == b""  # the old stream was ended
            await plain_call(http, gw.features, sid, call(2, "change_tools", {}))
            [(_, changed)] = await read_events(new, 1)
            assert changed["method"] == "notifications/tools/list_changed"


async def test_a_json_only_post_answers_json_and_its_interim_messages_go_to_the_get_stream(gw, http):
    # docs/errors.md (not_acceptable): the JSON answer cannot carry progress or log lines; they go to the GET stream.
    sid = await open_session(http, gw.features)
    async with http.get(gw.features, headers={**STREAM, "Mcp-Session-Id": sid}) as stream:
        assert stream.status == 200
        json_only = {"Accept": "application/json", "Content-Type": "application/json", "Mcp-Session-Id": sid}
        message = call(2, "progress", {"steps": 1}, token="j1")
        async with http.post(gw.features, json=message, headers=json_only) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
            assert (await resp.json())["result"]["content"][0]["text"] == "done"
        received = [m for _, m in await read_events(stream, 2)]
    assert [m["method"] for m in received] == ["notifications/progress", "notifications/message"]
    assert received[0]["params"]["progressToken"] == "j1"


async def test_a_stream_asked_for_while_draining_is_refused_shutting_down(gw, http):
    # docs/errors.md: shutting_down, -32062, HTTP 503. A GET stream (or legacy /sse) asked for while the
    # gateway drains was a bare 503 with no JSON-RPC error. (Such a request can only come on a connection
    # aiohttp has not closed yet, so the draining flag is set directly here.)
    sid = await open_session(http, gw.features)
    gw.gateway.endpoint.streams.closing = True
    for url, headers in ((gw.features, {**STREAM, "Mcp-Session-Id": sid}), (f"{gw.url}/sse", STREAM)):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            body = await resp.json()
        assert body["error"]["code"] == -32062 and reason(body) == "shutting_down", body


async def test_unknown_upstream_is_a_json_rpc_404(gw, http):
    url = f"{gw.mcp}/nope"
    async with http.post(url, json=initialize(), headers=ACCEPT) as resp:
        assert resp.status == 404 and reason(await resp.json()) == "unknown_upstream"
    async with http.get(url, headers={**STREAM, "Mcp-Session-Id": "x"}) as resp:
        body = await resp.json()
        assert resp.status == 404 and reason(body) == "unknown_upstream" and body["error"]["code"] == -32019
    async with http.delete(url, headers={"Mcp-Session-Id": "x"}) as resp:
        assert resp.status == 404 and reason(await resp.json()) == "unknown_upstream"


async def test_get_and_delete_refuse_an_unsupported_protocol_version(gw, http):
    sid = await open_session(http, gw.features)
    bad = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"}
    async with http.get(gw.features, headers={**STREAM, **bad}) as resp:
        body = await resp.json()
        assert resp.status == 400 and reason(body) == "unsupported_protocol_version"
        assert body["error"]["code"] == -32022 and "2025-11-25" in body["error"]["data"]["supported"]
    async with http.delete(gw.features, headers=bad) as resp:
        assert resp.status == 400 and reason(await resp.json()) == "unsupported_protocol_version"
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    async with http.post(gw.features, json=ping, headers={**ACCEPT, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200  # the refused DELETE left the session alone
    async with http.delete(gw.features, headers={"Mcp-Session-Id": sid,
                                                 "MCP-Protocol-Version": "2025-11-25"}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("view", ["", "/features"])
async def test_initialize_under_the_stateless_revision_is_refused(gw, http, view):
    message = initialize("2026-07-28")
    message["params"]["_meta"] = META
    headers = {**ACCEPT, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "initialize"}
    async with http.post(gw.mcp + view, json=message, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 400 and "Mcp-Session-Id" not in resp.headers
    assert body["id"] == 1 and body["error"]["code"] == -32022 and reason(body) == "unsupported_protocol_version"
    assert body["error"]["data"]["supported"] == ["2026-07-28"] and body["error"]["data"]["requested"] == "2026-07-28"


async def post_batch(http: aiohttp.ClientSession, url: str, sid: str, batch: list[Any],
                     accept: str = "application/json") -> tuple[int, str, Any]:
    headers = {"Accept": accept, "Content-Type": "application/json", "Mcp-Session-Id": sid}
    async with http.post(url, data=json.dumps(batch), headers=headers) as resp:
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return resp.status, "sse", await read_events(resp)
        text = await resp.text()
        return resp.status, resp.headers.get("Content-Type", ""), json.loads(text) if text else None


async def test_a_batch_in_a_2025_03_26_session_is_answered_with_one_array(gw, http):
    sid = await open_session(http, gw.features, "2025-03-26")
    batch = [call(2, "echo", {"value": "a"}), {"jsonrpc": "2.0", "id": "p", "method": "ping"},
             {"jsonrpc": "2.0", "method": "notifications/initialized"}, {"jsonrpc": "2.0", "id": 3}, 7,
             initialize("2025-03-26")]
    status, kind, body = await post_batch(http, gw.features, sid, batch)
    assert status == 200 and kind.startswith("application/json")
    by_id = {(reply["id"], reason(reply) if "error" in reply else None): reply for reply in body}
    assert len(body) == 5  # two answers, two invalid members, the refused initialize
    assert by_id[(2, None)]["result"]["content"][0]["text"] == "a"
    assert by_id[("p", None)]["result"] == {}
    # An invalid member is answered with its id when it has a readable one (3), else with null (7).
    assert (None, "invalid_request") in by_id and (3, "invalid_request") in by_id and (1, "invalid_request") in by_id
    assert sorted(r["id"] is None for r in body) == [False, False, False, False, True]
    only_notes = [{"jsonrpc": "2.0", "method": "notifications/initialized"},
                  {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}]
    assert (await post_batch(http, gw.features, sid, only_notes))[0] == 202


async def test_a_batch_streams_when_a_call_sends_interim_messages(gw, http):
    sid = await open_session(http, gw.features, "2025-03-26")
    batch = [call(2, "progress", {"steps": 2}, token="t"), call(3, "echo", {"value": "b"})]
    status, kind, events = await post_batch(http, gw.features, sid, batch, "application/json, text/event-stream")
    assert status == 200 and kind == "sse"
    answers = {m["id"]: m["result"]["content"][0]["text"] for _, m in events if "result" in m}
    assert answers == {2: "done", 3: "b"}
    assert [m["params"]["progress"] for _, m in events if m.get("method") == "notifications/progress"] == [1, 2]
    assert len({event_id for event_id, _ in events}) == len(events)


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
async def test_later_revisions_still_refuse_batches(gw, http, version):
    sid = await open_session(http, gw.features, version)
    status, _, body = await post_batch(http, gw.features, sid, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert status == 400 and body["error"]["code"] == -32600 and reason(body) == "batch_not_supported"


async def test_a_resumed_batch_stream_ends_once_its_calls_were_withdrawn(gw, http):
    # A batch's calls are withdrawn when its connection drops, but its stream (its events have ids) was never
    # finished: a GET with Last-Event-ID replayed it and then sent keep-alives for good, a client (and a task)
    # waiting for answers that could never come until the stream was evicted from the replay buffer.
    sid = await open_session(http, gw.features, "2025-03-26")
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    async with aiohttp.ClientSession() as dropping:
        resp = await dropping.post(gw.features, data=json.dumps([call(2, "hang", {}), call(3, "echo", {"value": "b"})]),
                                   headers=headers)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_events(resp, 2)  # the hang's log line and the echo's answer, in either order
        resp.close()  # the client goes away: the hang is withdrawn with it
    async with http.get(gw.features, headers={**STREAM, "Mcp-Session-Id": sid, "Last-Event-ID": events[0][0]}) as resp:
        assert resp.status == 200
        replayed = await read_events(resp)  # to the stream's end (read_events: within 10 s)
    assert replayed == events[1:]


async def test_a_cancellation_naming_true_cancels_no_call(gw, http):
    # JSON-RPC ids are strings and integers: `true` names no request. Python's True equals 1, so it withdrew call 1.
    sid = await open_session(http, gw.features)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features")
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    async with http.post(gw.features, json=call(1, "hang", {}), headers=headers) as resp:
        await read_events(resp, 1)  # the hang's log line: the call is in flight
        for request_id in (True, 1):
            note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
            async with http.post(gw.features, json=note, headers=headers) as taken:
                assert taken.status == 202
            if request_id is True:  # taken (202) with the call still running, not asked to stop
                assert 1 in session.inflight and not session.inflight[1].requested
        [(_, answer)] = await read_events(resp)
    assert reason(answer) == "request_cancelled"


async def test_a_get_stream_id_older_than_the_buffer_replays_what_it_still_holds(gw, http):
    # The session keeps its last 256 GET-stream events: a client that lost more than that gets what is left (the
    # newest), not nothing; an id the gateway never issued (past the newest) replays nothing.
    sid = await open_session(http, gw.features)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features")
    for n in range(1, 301):
        session.stream_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}})
    headers = {**STREAM, "Mcp-Session-Id": sid}
    async with http.get(gw.features, headers={**headers, "Last-Event-ID": "0-3"}) as resp:
        replayed = await read_events(resp, 256)
    assert [m["params"]["n"] for _, m in replayed] == list(range(45, 301))
    async with http.get(gw.features, headers={**headers, "Last-Event-ID": "0-9999"}) as resp:
        session.stream_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": 301}})
        [(_, first)] = await read_events(resp, 1)
    assert first["params"] == {"n": 301}


async def test_the_get_stream_replay_is_bounded_in_bytes_too(gw, http):
    # The session's replay kept its last 256 events whatever their size: an upstream's log lines or requests of up
    # to 16 MiB each, sent outside any call, held up to 4 GiB per session, kept whether or not a client ever
    # listened. It now holds at most REPLAY_BYTES of them (the newest; always the newest one), as the POST
    # streams' buffer is bounded in bytes.
    from gateway.session import REPLAY_BYTES
    sid = await open_session(http, gw.features)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "features")
    big = "x" * (REPLAY_BYTES // 16)
    for n in range(1, 41):
        session.stream_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n, "data": big}})
    async with http.get(gw.features, headers={**STREAM, "Mcp-Session-Id": sid, "Last-Event-ID": "0-0"}) as resp:
        session.stream_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": "end"}})
        replayed = [m["params"]["n"] for _, m in await read_events(resp, 16)]
    assert replayed == [*range(26, 41), "end"]  # fifteen of REPLAY_BYTES // 16 and a bit each: the newest
    session.stream_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "y" * REPLAY_BYTES}})
    assert len(session.replay) == 1  # one larger than the bound is still kept (a resume gets it)
