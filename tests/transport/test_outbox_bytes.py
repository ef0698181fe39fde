"""A session stream's unread messages are bounded in bytes as well as in number: past OUTBOX_NOTIFICATION_BYTES
queued, notifications are dropped (answers and server→client requests kept); past OUTBOX_BYTES nothing more is
queued, and a legacy stream is closed, as past OUTBOX_NOTIFICATIONS and OUTBOX_LIMIT messages. Before, 4,096
large notifications could make one session hold gigabytes (an upstream's message is up to 16 MiB)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import aiohttp
import pytest

from gateway.app import GATEWAY
from gateway.jsonrpc import dumps
from gateway.session import OUTBOX_BYTES, OUTBOX_NOTIFICATION_BYTES, OUTBOX_NOTIFICATIONS, Session
from tests.hardening.conftest import poll
from tests.transport.test_legacy_sse_backlog import JSON, SseReader, slow_reader  # noqa: F401 (a fixture)

MIB = 1 << 20


def _notice(size: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "n" * size}}


def _ask(n: int, size: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": f"customs-{n}", "method": "sampling/createMessage",
            "params": {"messages": [], "maxTokens": 1, "systemPrompt": "s" * size}}


async def test_a_stream_queue_is_bounded_in_bytes() -> None:
    session = Session(id="s" * 64, principal_key="p", view=None, protocol_version="2025-11-25")
    session.get_stream_open = True
    for _ in range(OUTBOX_NOTIFICATIONS):  # 64 KiB each: the bytes bound comes long before the count's
        session.stream_event(_notice(64 << 10))
    queued = session.outbox.qsize()
    assert queued < OUTBOX_NOTIFICATIONS // 2, queued  # (on the old code all 256 were queued, 16 MiB)
    assert OUTBOX_NOTIFICATION_BYTES <= session.outbox.bytes < OUTBOX_NOTIFICATION_BYTES + (65 << 10)
    assert session.dropping
    # A server→client request is still queued past the notifications' bound, up to OUTBOX_BYTES (then the
    # replay serves a resuming GET).
    for n in range(40):
        session.stream_event(_ask(n, MIB))
    assert OUTBOX_BYTES <= session.outbox.bytes < OUTBOX_BYTES + MIB + 1024, session.outbox.bytes
    held = session.outbox.qsize()
    session.stream_event(_ask(99, 10))
    assert session.outbox.qsize() == held
    # What the client reads is taken off the bytes: once below the bounds again, messages are queued again.
    sizes = 0
    while not session.outbox.empty():
        _, message = session.outbox.get_nowait()
        sizes += len(dumps(message))
    assert sizes > OUTBOX_BYTES and session.outbox.bytes == 0
    session.stream_event(_notice(10))
    assert session.outbox.qsize() == 1 and session.outbox.bytes == len(dumps(_notice(10))) and not session.dropping
    assert (await session.outbox.get())[1] == _notice(10) and session.outbox.bytes == 0


def test_a_legacy_stream_past_the_bytes_bound_is_closed() -> None:
    closed: list[bool] = []
    legacy = Session(id="l" * 64, principal_key="p", view=None, protocol_version="2024-11-05", legacy_sse=True,
                     close_stream=lambda: closed.append(True))
    legacy.get_stream_open = True
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "a" * MIB}]}}
    for _ in range(OUTBOX_BYTES // MIB):
        legacy.stream_event(answer)
    assert closed == []
    legacy.stream_event(answer)  # the bound is reached: the next message closes the stream instead
    assert closed == [True] and legacy.outbox.qsize() == OUTBOX_BYTES // MIB
    assert legacy.outbox.bytes >= OUTBOX_BYTES


async def test_large_progress_a_legacy_client_does_not_read_is_bounded_in_bytes(
        slow_reader: tuple[Any, socket.socket], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Real gateway, stdio flood server: 150 progress notifications of 200,000 characters (30 MB) while the
    client reads nothing; the session queues no more than the bytes bound (plus one), and the answer behind
    them still comes."""
    gw, sock = slow_reader
    reader = SseReader(sock)
    endpoint = (await asyncio.wait_for(reader.next_data(), 10)).decode()
    caplog.set_level(logging.WARNING, logger="customs")
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "flood", "arguments": {"count": 150, "size": 200_000}, "_meta": {"progressToken": "p"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + endpoint, json=call, headers=JSON) as resp:
            assert resp.status == 202, await resp.text()
    session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
    await poll(lambda: 7 not in session.inflight, timeout=30, what="the call's answer")
    # Unread, the queue only grew (the writer took out what the socket's buffers hold): its bytes are its most.
    assert session.outbox.bytes < OUTBOX_NOTIFICATION_BYTES + 200_000 + 1024, session.outbox.bytes  # (old: ~30 MB)
    answer: dict[str, Any] | None = None

    async def read_until_answer() -> None:
        nonlocal answer
        while answer is None:
            message = json.loads(await reader.next_data())
            if message.get("id") == 7:
                answer = message
    await asyncio.wait_for(read_until_answer(), 20)
    assert answer is not None and answer["result"]["content"][0]["text"] == "flooded", answer
    assert any("not reading" in r.getMessage() for r in caplog.records)
