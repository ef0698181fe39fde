"""Legacy HTTP+SSE (2024-11-05): a client that stops reading its GET /sse stream while a call floods it
with progress still gets the call's answer once it reads again (interim messages past the stream's
backlog are dropped, never the answer). Real gateway, real stdio SDK server, a raw socket as the
slow reader (a tiny receive buffer, so the gateway's writes stall as soon as the client stops reading)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import session as sessions_module
from gateway.app import GATEWAY
from tests.hardening.conftest import poll
from tests.support.flood_server import FLOOD_SERVER_PATH

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def slow_reader(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[tuple[Any, socket.socket]]:
    gw = await start_gateway({"upstreams": [{"name": "f", "command": [sys.executable, FLOOD_SERVER_PATH],
                                             "timeout_s": 20}],
                              "identity": {"mode": "anonymous"},
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
        sock.sendall(b"GET /sse/f HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        yield gw, sock
    finally:
        sock.close()


class SseReader:
    """SSE `data:` payloads read off a raw socket (chunked transfer framing is skipped: payloads are JSON
    or the endpoint path, and every SSE line this test looks for starts with `data: `)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    async def next_data(self) -> bytes:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer or not self._buffer.startswith(b"data: "):
            if b"\n" in self._buffer:
                self._buffer = self._buffer.split(b"\n", 1)[1]
                continue
            chunk = await loop.sock_recv(self._sock, 65536)
            if not chunk:
                raise EOFError("the gateway closed the stream")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line[6:].rstrip(b"\r")



async def test_an_answer_behind_a_flood_the_client_did_not_read_is_delivered(
        slow_reader: tuple[Any, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    gw, sock = slow_reader
    reader = SseReader(sock)
    endpoint = (await asyncio.wait_for(reader.next_data(), 10)).decode()
    assert endpoint.startswith("/messages?session_id="), endpoint
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "flood", "arguments": {"count": 500, "size": 20000}, "_meta": {"progressToken": "p"}}}
    caplog.set_level(logging.WARNING, logger="customs")
    async with aiohttp.ClientSession() as http:
        # (the answers go to the stream; the POST is only accepted)
        for body in ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2024-11-05", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}},
                     {"jsonrpc": "2.0", "method": "notifications/initialized"}, call):
            async with http.post(gw.url + endpoint, json=body, headers=JSON) as resp:
                assert resp.status == 202, await resp.text()
    # 10 MB of progress while the client reads nothing: far past the socket buffers and the stream's backlog.
    # The call leaves the session's calls in flight just before its answer is offered to the stream (no await
    # between: a legacy session keeps no replay of its answers, there is no resumption in 2024-11-05).
    session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
    await poll(lambda: 7 not in session.inflight, timeout=30, what="the call's answer")
    answer: dict[str, Any] | None = None
    progress = 0

    async def read_until_answer() -> None:
        nonlocal answer, progress
        while answer is None:
            message = json.loads(await reader.next_data())
            if message.get("id") == 7:
                answer = message
            elif message.get("method") == "notifications/progress":
                progress += 1
    # (on the old code the answer found the stream's queue full and was dropped with a warning: no answer)
    await asyncio.wait_for(read_until_answer(), 20)
    assert answer is not None and answer["result"]["content"][0]["text"] == "flooded", answer
    assert 0 < progress < 500  # some progress was dropped, never silently
    assert any("dropped" in r.getMessage() and "not reading" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]



async def test_a_stream_whose_answers_pile_up_unread_is_closed(
        slow_reader: tuple[Any, socket.socket], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Past OUTBOX_LIMIT unread messages (answers included) the stream is closed with a logged reason: the
    # client sees its stream end instead of waiting for answers that will never be written.
    monkeypatch.setattr(sessions_module, "OUTBOX_LIMIT", sessions_module.OUTBOX_NOTIFICATIONS + 4)
    # The count bound is this test's: the flood's 10 MB of progress would stop at the bytes bound first
    # (tests/transport/test_outbox_bytes.py), short of OUTBOX_NOTIFICATIONS messages.
    monkeypatch.setattr(sessions_module, "OUTBOX_NOTIFICATION_BYTES", 1 << 40)
    gw, sock = slow_reader
    reader = SseReader(sock)
    endpoint = (await asyncio.wait_for(reader.next_data(), 10)).decode()
    caplog.set_level(logging.WARNING, logger="customs")
    session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
    flood = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "flood", "arguments": {"count": 500, "size": 20000}, "_meta": {"progressToken": "p"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + endpoint, json=flood, headers=JSON) as resp:
            assert resp.status == 202
        await poll(lambda: 7 not in session.inflight, timeout=30, what="the flood's answer")  # (offered then)
        for request_id in range(10, 20):  # answers the client does not read either, until the stream is closed
            echo = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"value": "v"}}}
            async with http.post(gw.url + endpoint, json=echo, headers=JSON) as resp:
                assert resp.status in (202, 404)  # 404 session_not_found once the stream was closed
            if resp.status == 404:
                break
        await poll(lambda: session.closed, timeout=10, what="the session to end")

    async def read_to_the_end() -> None:
        while True:
            await reader.next_data()
    with pytest.raises(EOFError):
        await asyncio.wait_for(read_to_the_end(), 10)
    assert any("closing the stream" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_session_stream_queue_is_bounded_whatever_it_carries() -> None:
    # A Streamable HTTP GET stream has no close_stream: past OUTBOX_LIMIT unread messages even server→client
    # requests (kept past the notification bound) are not queued (its client resumes from the replay buffer);
    # a legacy stream is closed there instead.
    stream = sessions_module.Session(id="s" * 64, principal_key="p", view=None, protocol_version="2025-11-25")
    stream.get_stream_open = True
    for n in range(sessions_module.OUTBOX_LIMIT + 100):
        stream.stream_event({"jsonrpc": "2.0", "id": f"customs-{n}", "method": "sampling/createMessage"})
        stream.stream_event({"jsonrpc": "2.0", "method": "notifications/message"})
    assert stream.outbox.qsize() == sessions_module.OUTBOX_LIMIT  # (one step: it grew without bound)
    closed: list[bool] = []
    legacy = sessions_module.Session(id="l" * 64, principal_key="p", view=None, protocol_version="2024-11-05",
                                     legacy_sse=True, close_stream=lambda: closed.append(True))
    legacy.get_stream_open = True
    for n in range(sessions_module.OUTBOX_LIMIT + 1):
        legacy.stream_event({"jsonrpc": "2.0", "id": n, "result": {}})
    assert closed == [True] and legacy.outbox.qsize() == sessions_module.OUTBOX_LIMIT
