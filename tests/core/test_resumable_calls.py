"""A call whose POST answer became an SSE stream outlives a dropped connection (Streamable HTTP: a
disconnection is not a cancellation): it runs to its end, and GET + `Last-Event-ID` gets what the client
missed, then the stream's live events, until the answer. `notifications/cancelled` and DELETE still end it.

A real gateway in front of a real SDK server whose tool reports progress, waits for the test, reports
again and records that it finished (or was cancelled); raw aiohttp clients, and a real SDK client behind
a TCP relay the test cuts (a network drop) that resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from mcp.server.mcpserver import Context, MCPServer

from gateway.http.streams import StreamReplay
from tests.core.test_http_streams import ACCEPT, STREAM, call, open_session, read_events
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio


@dataclass
class Slow:
    """The upstream tool's side: `gate` lets it go on after its first progress; `ends` says how it ended."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ends: list[str] = field(default_factory=list)


def slow_server() -> tuple[MCPServer[Any], Slow]:
    server: MCPServer[Any] = MCPServer("slow")
    state = Slow()

    @server.tool()
    async def slow(ctx: Context) -> str:
        """Progress 1, wait for the test, progress 2, finish."""
        outcome = "cancelled"
        state.started.set()
        try:
            await ctx.report_progress(1, 2, "first")
            await state.gate.wait()
            await ctx.report_progress(2, 2, "second")
            outcome = "completed"
            return "finished"
        finally:
            state.ends.append(outcome)
            state.ended.set()

    return server, state


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[Any]:
    server, state = slow_server()
    async with run_http_server(server) as url:
        gateway = await start_gateway({"upstreams": [{"name": "slow", "url": url}],
                                       "policies": {"dir": str(permissive_policies)}})
        gateway.slow_url = f"{gateway.mcp}/slow"
        gateway.slow = state
        yield gateway


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def dropped_call(http: aiohttp.ClientSession, url: str, sid: str, request_id: int = 2) -> str:
    """Start the slow call, read its first event, drop the connection; the id of that event."""
    resp = await http.post(url, json=call(request_id, "slow", {}, token="p"), headers={**ACCEPT, "Mcp-Session-Id": sid})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    [(first_id, first)] = await read_events(resp, 1)
    assert first["method"] == "notifications/progress" and first["params"]["progress"] == 1
    resp.close()  # closes the connection: the client went away (no notifications/cancelled)
    return first_id


def resume(http: aiohttp.ClientSession, url: str, sid: str, last_id: str) -> Any:
    return http.get(url, headers={**STREAM, "Mcp-Session-Id": sid, "Last-Event-ID": last_id})


async def test_a_dropped_stream_call_runs_to_its_end_and_resumes_with_its_answer(gw, http):
    sid = await open_session(http, gw.slow_url)
    first_id = await dropped_call(http, gw.slow_url, sid)
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        assert resp.status == 200
        gw.slow.gate.set()  # the drop was seen before this GET; now let the tool go on
        events = await read_events(resp)  # ends after the answer
    assert gw.slow.ends == ["completed"]  # (on the old code: cancelled when the POST connection closed)
    assert [m.get("method") for _, m in events] == ["notifications/progress", None]
    assert events[0][1]["params"]["progress"] == 2 and events[0][1]["params"]["progressToken"] == "p"
    assert events[1][1]["id"] == 2 and events[1][1]["result"]["content"][0]["text"] == "finished"
    stream = first_id.rsplit("-", 1)[0]
    assert all(event_id.rsplit("-", 1)[0] == stream for event_id, _ in events)  # that stream's ids only
    # The whole stream stays resumable from any id it sent, and nothing else is replayed.
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        assert await read_events(resp) == events


async def test_a_call_nobody_resumes_ends_and_leaves_nothing_behind(gw, http):
    sid = await open_session(http, gw.slow_url)
    first_id = await dropped_call(http, gw.slow_url, sid)
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with http.post(gw.slow_url, json=ping, headers={**ACCEPT, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200  # answered after the gateway saw the earlier connection close
    gw.slow.gate.set()
    await asyncio.wait_for(gw.slow.ended.wait(), 10)
    session = gw.gateway.sessions.get(sid, await gw.gateway.parts.identifier.identify({}, None), "slow")
    await eventually(lambda: not session.inflight and not session.progress_routes)  # the call's task is over
    assert gw.slow.ends == ["completed"]
    # What it sent after the drop, its answer included, waits in the (bounded) replay buffer, and a late
    # resume gets it and ends: the stream is finished. (On the old code the answer was never kept.)
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        events = await read_events(resp)
    assert [m.get("method") for _, m in events] == ["notifications/progress", None]
    assert events[1][1]["result"]["content"][0]["text"] == "finished"


async def test_a_resume_ends_when_its_stream_is_evicted_and_the_call_still_ends(gw, http):
    """The replay buffer stays bounded while calls outlive their connections: a stream evicted under a
    resuming reader ends that reader (no answer to give), and the call itself still runs to its end."""
    gw.gateway.endpoint.streams.post_replay = StreamReplay(max_streams=1)
    sid = await open_session(http, gw.slow_url)
    first_id = await dropped_call(http, gw.slow_url, sid)
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        await dropped_call(http, gw.slow_url, sid, request_id=3)  # a second stream: the first is evicted
        assert await read_events(resp) == []
    gw.slow.gate.set()
    await eventually(lambda: gw.slow.ends == ["completed", "completed"])


async def test_notifications_cancelled_after_the_drop_still_cancels(gw, http):
    sid = await open_session(http, gw.slow_url)
    first_id = await dropped_call(http, gw.slow_url, sid)
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}
        async with http.post(gw.slow_url, json=cancel, headers={**ACCEPT, "Mcp-Session-Id": sid}) as posted:
            assert posted.status == 202
        events = await read_events(resp)
    await asyncio.wait_for(gw.slow.ended.wait(), 10)
    assert gw.slow.ends == ["cancelled"]
    assert [m["error"]["data"]["reason"] for _, m in events] == ["request_cancelled"]


async def test_deleting_the_session_ends_a_detached_call(gw, http):
    sid = await open_session(http, gw.slow_url)
    first_id = await dropped_call(http, gw.slow_url, sid)
    async with resume(http, gw.slow_url, sid, first_id) as resp:
        async with http.delete(gw.slow_url, headers={"Mcp-Session-Id": sid}) as deleted:
            assert deleted.status == 200
        events = await read_events(resp)
    await asyncio.wait_for(gw.slow.ended.wait(), 10)
    assert gw.slow.ends == ["cancelled"]
    assert [m["error"]["data"]["reason"] for _, m in events] == ["request_cancelled"]


async def test_a_call_answered_in_json_is_still_withdrawn_when_its_client_goes(gw, http):
    """No event id was sent, so the client cannot resume: the drop withdraws the call, as before."""
    sid = await open_session(http, gw.slow_url)
    headers = {"Accept": "application/json", "Content-Type": "application/json", "Mcp-Session-Id": sid}
    post = asyncio.create_task(http.post(gw.slow_url, json=call(2, "slow", {}, token="p"), headers=headers))
    await asyncio.wait_for(gw.slow.started.wait(), 10)
    post.cancel()  # drops the connection
    with contextlib.suppress(asyncio.CancelledError):
        await post
    await asyncio.wait_for(gw.slow.ended.wait(), 10)
    assert gw.slow.ends == ["cancelled"]


class Relay:
    """A TCP relay in front of the gateway whose connections the test can cut (a network drop)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []
        self.resumed = asyncio.Event()  # a GET with the Last-Event-ID of a POST stream came through

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, inbound: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    head = data.lower()
                    if inbound and head.startswith(b"get ") and b"last-event-id: " in head \
                            and b"last-event-id: 0-" not in head:
                        self.resumed.set()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()


async def test_an_sdk_client_whose_stream_drops_resumes_and_gets_the_result(gw):
    relay = Relay(int(gw.url.rsplit(":", 1)[1]))
    port = await relay.start()
    first_progress = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress == 1:
            first_progress.set()

    try:
        async with sdk_client(f"http://127.0.0.1:{port}/mcp/slow") as client:
            calling = asyncio.create_task(client.call_tool("slow", {}, progress_callback=on_progress))
            await asyncio.wait_for(first_progress.wait(), 10)
            relay.cut()
            await asyncio.wait_for(relay.resumed.wait(), 10)  # the SDK resumes with the POST stream's last id
            gw.slow.gate.set()
            result = await asyncio.wait_for(calling, 20)
    finally:
        await relay.close()
    assert not result.is_error and result.content[0].text == "finished"  # type: ignore[union-attr]
    assert gw.slow.ends == ["completed"]
