"""An upstream that answers at the HTTP level with garbage, on every path the gateway talks HTTP to it.

Each case: one path (the request the upstream answers with garbage) and one kind of garbage (garbage_upstream.py's
GARBAGE: a malformed status line, a header line with no colon, invalid chunked encoding, a Content-Length past the
body then close, a body cut mid-JSON, an SSE answer cut mid-event, a stream broken after its first event, an SSE
`retry` int() refuses, an absurdly long header, a body that is no gzip, both lengths, a negative length, a lone 100
or 101, an HTTP/0.9-style answer with no status line, the connection closed before any answer). The agent must get a
clean answer (a JSON-RPC error with a stable upstream reason, or the path's normal answer when the failure is not
the agent's request's: a notification's 202, a call going on without the GET stream), never aiohttp's text/plain 500
nor a hang; nothing may be left open once the agent's session ends; the gateway must go on serving once the upstream
behaves; and the log holds no ERROR (a plain upstream fault is no bug). The readiness probe's trial (an open
circuit's HEAD) is tested alike, and so is a set-up naming what no later request can carry (a session id, a legacy
endpoint). A real gateway app, real HTTP, a real scripted upstream. What failed (a text/plain 500 to the agent's
initialize: the GET opening a legacy SSE stream answered with garbage; a session id with a control character; an
endpoint that is no URL; an SSE `retry` of digits int() refuses, on every SSE stream; an event id no Last-Event-ID
can carry, resuming a call's answer; on the GET stream its listener died, an ERROR logged) is fixed in
streamable_http.py, sse.py, events.py and streamable_answer.py; a session id that is not visible ASCII (the MCP
spec's 0x21-0x7E: a space, a tab, bytes past ASCII) is refused as well. Each path runs its kinds of garbage at once
on one gateway, one upstream per kind (they share nothing), to keep the table fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ANON, RawAgent, answered_roots_in_call, decode_answer
from tests.hardening.garbage_upstream import GARBAGE, GarbageUpstream, garbage_upstream

CLEAN_REASONS = {"upstream_error", "upstream_unavailable"}
# Legacy SSE: a POST is only acknowledged, its answer comes on the stream. Garbage after a 2xx status line is an
# acknowledgement, like any other (its body is never read): the answer that never comes is the call's timeout.
ACKNOWLEDGED = {"short_body", "cut_json", "sse_cut_mid_event", "stream_bad_chunk", "stream_short", "bad_gzip",
                "sse_retry_not_a_number", "sse_retry_too_long", "sse_id_unsendable"}
INIT_PARAMS: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
                               "clientInfo": {"name": "garbage-test", "version": "1"}}


class Agent(RawAgent):
    """A raw streamable HTTP agent on one gateway view, expecting `reasons` of the errors it gets."""

    def __init__(self, http: aiohttp.ClientSession, url: str, reasons: set[str] = CLEAN_REASONS) -> None:
        super().__init__(http, url)
        self.reasons = reasons

    def clean(self, status: int, content_type: str, body: Any, *, ok: bool = False) -> None:
        """A JSON-RPC answer: a result (when `ok` allows one) or an error with a stable upstream reason."""
        assert "text/plain" not in content_type and isinstance(body, dict), (status, content_type, body)
        if "result" in body and ok:
            return
        error = body.get("error") or {}
        assert (error.get("data") or {}).get("reason") in self.reasons, (status, body)


_decode = decode_answer


async def initialize(agent: Agent) -> tuple[int, str, Any]:
    answer = await agent.request("initialize", INIT_PARAMS, rid=0)
    if agent.session_id:
        await agent.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return answer


# -- what the agent does on each path, and what it must get ---------------------------------------------------


async def on_set_up(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)  # the set-up fails cleanly (or, not needing it, goes on)


async def on_call(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    agent.clean(*await agent.request("tools/call", {"name": "echo", "arguments": {}}))


async def on_get_stream(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    status, _, body = await agent.request("tools/call", {"name": "echo", "arguments": {}})
    assert status == 200 and body["result"]["content"][0]["text"] == "ok", body  # the call needs no GET stream


async def on_page_two(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    agent.clean(*await agent.request("tools/list"), ok=True)  # the failed page's error, or what could be listed
    agent.clean(*await agent.request("tools/call", {"name": "echo", "arguments": {}}), ok=True)


async def on_resource(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    agent.clean(*await agent.request("resources/read", {"uri": "file:///r"}))


async def on_prompt(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    agent.clean(*await agent.request("prompts/get", {"name": "p"}))


async def on_notification(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    status, _, body = await agent.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert status == 202, (status, body)  # taken, as any notification whose passing on fails


async def on_answer(agent: Agent, up: GarbageUpstream) -> None:
    """The upstream asks roots/list in a call's SSE answer; the agent's answer is POSTed on to garbage."""
    agent.clean(*await initialize(agent), ok=True)
    agent.clean(200, "", _decode(await answered_roots_in_call(agent, 15)), ok=True)


async def on_session_end(agent: Agent, up: GarbageUpstream) -> None:
    agent.clean(*await initialize(agent), ok=True)
    assert (await agent.end()) in (200, 202, 204)


Flow = Callable[[Agent, GarbageUpstream], Awaitable[None]]


@dataclass(frozen=True)
class Path_:
    name: str
    key: str  # the upstream request answered with garbage (garbage_upstream.py)
    flow: Flow
    sse: bool = False
    legacy: bool = False
    resumable: bool = False


PATHS = [
    Path_("initialize", "initialize", on_set_up),
    Path_("initialized", "notifications/initialized", on_set_up),
    Path_("get-stream", "GET", on_get_stream),
    Path_("call-json", "tools/call", on_call),
    Path_("call-sse", "tools/call", on_call, sse=True),
    Path_("call-sse-resume", "resume", on_call, sse=True, resumable=True),
    Path_("tools-list-page-2", "tools/list#2", on_page_two),
    Path_("resources-read", "resources/read", on_resource),
    Path_("prompts-get", "prompts/get", on_prompt),
    Path_("notification", "notifications/roots/list_changed", on_notification),
    Path_("answer", "answer", on_answer, sse=True),
    Path_("session-delete", "DELETE", on_session_end),
    Path_("legacy-stream", "GET", on_set_up, legacy=True),
    Path_("legacy-initialize", "initialize", on_set_up, legacy=True),
    Path_("legacy-call", "tools/call", on_call, legacy=True),
    Path_("legacy-notification", "notifications/roots/list_changed", on_notification, legacy=True),
]


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
async def test_garbage_from_the_upstream_is_a_clean_answer(start_gateway: Any, permissive_policies: Path,
                                                          caplog: pytest.LogCaptureFixture, path: Path_) -> None:
    """One gateway per path, one upstream per kind of garbage (g0, g1, ...: they share nothing), run at once."""
    caplog.set_level(logging.INFO)
    ups = [GarbageUpstream(garbage={path.key: GARBAGE[kind]}, sse=path.sse, legacy=path.legacy,
                           resumable=path.resumable) for kind in GARBAGE]
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        for up in ups:
            await stack.enter_async_context(garbage_upstream(up))
        gw = await start_gateway({
            "upstreams": [{"name": f"g{i}", "url": up.url, "timeout_s": 3 if path.legacy else 10,
                           **({"transport": "sse"} if path.legacy else {})} for i, up in enumerate(ups)],
            "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        rows = enumerate(zip(GARBAGE, ups, strict=True))
        results = await asyncio.gather(*(_garbage_row(gw, http, path, kind, f"g{i}", up) for i, (kind, up) in rows),
                                       return_exceptions=True)
        failed = {kind: repr(result) for kind, result in zip(GARBAGE, results, strict=True) if result is not None}
        assert not failed, failed
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in errors]


async def _garbage_row(gw: Any, http: aiohttp.ClientSession, path: Path_, kind: str, name: str,
                       up: GarbageUpstream) -> None:
    acknowledged = path.legacy and kind in ACKNOWLEDGED and path.key != "GET"
    agent = Agent(http, f"{gw.mcp}/{name}", CLEAN_REASONS | {"upstream_timeout"} if acknowledged else CLEAN_REASONS)
    await path.flow(agent, up)
    assert path.key in up.seen, up.seen  # the garbage was served
    if agent.session_id and path.key != "DELETE":
        assert (await agent.end()) in (200, 202, 204)
    upstream = gw.gateway.parts.upstreams[name]
    assert not upstream.sessions, upstream.sessions  # nothing left open at the upstream
    # The upstream behaves again: the gateway serves a new session there.
    up.garbage.clear()
    again = Agent(http, f"{gw.mcp}/{name}")
    again.clean(*await initialize(again), ok=True)
    status, _, body = await again.request("tools/call", {"name": "echo", "arguments": {}}, rid=2)
    assert status == 200 and body["result"]["content"][0]["text"] == "ok", body
    await again.end()
    assert not upstream.sessions, upstream.sessions
    # No stream reader or listener of the upstream's sessions outlives them (the readiness probe is no session's).
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(f"customs-{name}-")
            and not t.done() and not t.get_name().endswith("-probe")]
    assert not left, left


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_to_the_readiness_trial_is_not_ready_with_a_reason(start_gateway: Any, permissive_policies: Path,
                                                                        caplog: pytest.LogCaptureFixture,
                                                                        kind: str) -> None:
    """An open circuit's trial (the HEAD /readyz sends, http_base.py) answered with garbage: not ready, named."""
    caplog.set_level(logging.INFO)
    up = GarbageUpstream(garbage={"initialize": GARBAGE["closed_before_answer"], "HEAD": GARBAGE[kind]})
    async with garbage_upstream(up), aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "g", "url": up.url, "timeout_s": 5}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        upstream = gw.gateway.parts.upstreams["g"]
        for _ in range(upstream.breaker.threshold):  # connections closed before any answer open the circuit
            Agent(http, f"{gw.mcp}/g").clean(*await initialize(Agent(http, f"{gw.mcp}/g")))
        assert upstream.breaker.is_open
        upstream.breaker.cooldown_s = 0  # the trial is due now (the cooldown's length is not what is tested)
        async with asyncio.timeout(15), http.get(f"{gw.url}/readyz") as resp:
            body = await resp.json()
            if kind == "switching_protocols":  # an HTTP answer, if an odd one: the trial asks only "reachable?"
                assert resp.status == 200 and body["upstreams"]["g"]["detail"] == "reachable", body
            else:
                assert resp.status == 503 and body["upstreams"]["g"]["ready"] is False, body
                assert body["upstreams"]["g"]["detail"].startswith(("connection failed", "circuit open")), body
        assert "HEAD" in up.seen
        up.garbage.clear()  # the upstream behaves: the next trial closes the circuit
        async with asyncio.timeout(15), http.get(f"{gw.url}/readyz") as resp:
            assert resp.status == 200, await resp.text()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]


# What a session's set-up hands back that the gateway must use on every later request: a session id (streamable
# HTTP) or an endpoint (legacy SSE) that no request can carry.
NAMES = [  # (case, what the upstream names, whether the gateway can use it: served, or refused as upstream_error)
    ("session-id-control-character", {"session_id": b"s\x01id"}, False),
    ("session-id-escape", {"session_id": b"s\x1b[2Jid"}, False),
    ("session-id-delete", {"session_id": b"s\x7fid"}, False),
    # The MCP spec: a session id holds only visible ASCII (0x21-0x7E); these were sent back as they came.
    ("session-id-not-ascii", {"session_id": b"s\xff\xfeid"}, False),
    ("session-id-space", {"session_id": b"s id"}, False),
    ("session-id-tab", {"session_id": b"s\tid"}, False),
    ("endpoint-bad-ipv6", {"endpoint": b"http://[127.0.0.1/messages", "legacy": True}, False),
    ("endpoint-port-out-of-range", {"endpoint": b"http://127.0.0.1:99999/messages", "legacy": True}, False),
    ("endpoint-control-character", {"endpoint": b"/messages?s=\x01", "legacy": True}, True),  # (percent-encoded)
    ("endpoint-not-ascii", {"endpoint": b"/m\xff\xfe", "legacy": True}, True),
]


@pytest.mark.parametrize(("name", "given", "usable"), NAMES, ids=[n for n, _, _ in NAMES])
async def test_a_session_name_no_request_can_carry_is_a_clean_answer(start_gateway: Any, permissive_policies: Path,
                                                                     caplog: pytest.LogCaptureFixture, name: str,
                                                                     given: dict[str, Any], usable: bool) -> None:
    caplog.set_level(logging.INFO)
    up = GarbageUpstream(**given)
    async with garbage_upstream(up), aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "g", "url": up.url, "timeout_s": 5, **({"transport": "sse"} if up.legacy else {})}],
            "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        agent = Agent(http, f"{gw.mcp}/g")
        agent.reasons = {"upstream_error"}
        status, content_type, body = await initialize(agent)
        agent.clean(status, content_type, body, ok=usable)  # was a text/plain 500 (an escaped ValueError)
        if usable:
            status, _, body = await agent.request("tools/call", {"name": "echo", "arguments": {}})
            assert status == 200 and body["result"]["content"][0]["text"] == "ok", body
        if agent.session_id:
            assert (await agent.end()) in (200, 202, 204)
        upstream = gw.gateway.parts.upstreams["g"]
        assert not upstream.sessions, upstream.sessions
        up.session_id, up.endpoint = b"s-1", b"/messages"  # the upstream behaves: served
        again = Agent(http, f"{gw.mcp}/g")
        again.clean(*await initialize(again), ok=True)
        status, _, body = await again.request("tools/call", {"name": "echo", "arguments": {}}, rid=2)
        assert status == 200 and body["result"]["content"][0]["text"] == "ok", body
        await again.end()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in errors]


async def test_a_get_stream_event_id_no_last_event_id_can_carry_reopens_the_stream_without_it(
        start_gateway: Any, permissive_policies: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The GET stream's last event id holds a control character (aiohttp refuses it as Last-Event-ID): the stream
    is reopened without it, as one that gave no id (its listener died: a ValueError, 'never retrieved')."""
    caplog.set_level(logging.INFO)
    up = GarbageUpstream(garbage={"GET": GARBAGE["sse_id_unsendable"]})
    async with garbage_upstream(up), aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "g", "url": up.url, "timeout_s": 10}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        agent = Agent(http, f"{gw.mcp}/g")
        agent.clean(*await initialize(agent), ok=True)
        async with asyncio.timeout(15):
            while up.seen.count("GET") < 2:  # polled: the reconnect's back-off is the gateway's own
                await asyncio.sleep(0.02)
        assert "resume" not in up.seen, up.seen  # never sent with the id it cannot carry
        listeners = [t for t in asyncio.all_tasks() if t.get_name() == "customs-g-get-stream"]
        assert listeners and not any(t.done() for t in listeners), listeners
        assert (await agent.end()) in (200, 202, 204)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in errors]
