"""The SSE decoder: line endings, chunk boundaries, ids, comments, size cap."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.transport.events import Oversized, SseEvent, iter_sse

STREAM = (b": keep-alive comment\n"
          b"event: endpoint\ndata: /messages?s=1\n\n"
          b"id: 7\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
          b"data: no id of its own\rretry: 1500\r\r"
          b"id: 8\n\n"  # an id alone dispatches nothing
          b"data: after\n\n"
          b"data: unterminated")


class Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def decode(chunks: list[bytes], max_bytes: int = 1 << 20) -> list[SseEvent]:
    return [e async for e in iter_sse(Chunks(chunks), max_bytes)]  # type: ignore[arg-type]


EXPECTED = [
    SseEvent("endpoint", "/messages?s=1"),
    SseEvent("message", '{"a":\n1}', "7"),
    SseEvent("message", "no id of its own", "7", 1500),
    SseEvent("message", "after", "8"),
]


async def test_decodes_a_stream_in_one_chunk() -> None:
    assert await decode([STREAM]) == EXPECTED


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12, unique=True))
async def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(STREAM)]
    assert await decode([STREAM[a:b] for a, b in itertools.pairwise(edges)]) == EXPECTED


async def test_oversized_event_is_an_upstream_error() -> None:
    with pytest.raises(GatewayError) as info:
        await decode([b"data: " + b"x" * 2000], max_bytes=1000)
    assert info.value.reason == "upstream_error"
    with pytest.raises(GatewayError):
        await decode([b"data: " + b"x" * 600 + b"\n", b"data: " + b"y" * 600 + b"\n"], max_bytes=1000)
    with pytest.raises(GatewayError):  # a whole event in one chunk (on the old code: passed on, past the cap)
        await decode([b"data: " + b"x" * 2000 + b"\n\n"], max_bytes=1000)


# An answer past a 1000-byte cap in each SDK's member order (ids 41 and 42), then the events of STREAM: read past,
# handed over by their edges, and the stream goes on intact, however it is cut into chunks.
OVERSIZED = (b'event: message\ndata: {"jsonrpc":"2.0","id":41,"result":{"text":"' + b"x" * 1500 + b'"}}\n\n'
             b'data: {"result":{"text":"' + b"y" * 700 + b'",\ndata: "more":"' + b"z" * 700
             + b'"},"jsonrpc":"2.0","id":42}\r\n\r\n' + STREAM)


async def decode_skipping(chunks: list[bytes]) -> tuple[list[SseEvent], list[int | None]]:
    skipped: list[Oversized] = []
    events = [e async for e in iter_sse(Chunks(chunks), 1000, oversized=skipped.append)]  # type: ignore[arg-type]
    return events, [s.answered_id() for s in skipped]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(OVERSIZED) - 1), max_size=12, unique=True))
async def test_an_oversized_event_is_read_past_when_asked(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(OVERSIZED)]
    events, answered = await decode_skipping([OVERSIZED[a:b] for a, b in itertools.pairwise(edges)])
    assert answered == [41, 42]
    assert events == EXPECTED


@pytest.mark.parametrize(("value", "retry_ms"), [("250", 250), ("\u0661\u0662", None), ("\u00b2", None),
                                                 ("+5", None), ("9" * 5000, None)])
async def test_a_retry_counts_only_when_it_is_ascii_digits(value: str, retry_ms: int | None) -> None:
    """The SSE spec: a `retry` of ASCII digits only sets the reconnection time, any other is ignored (Arabic-Indic
    digits, which Python's int() reads, set 12 ms). One past int()'s 4,300 digits is ignored too."""
    events = await decode([f"retry: {value}\ndata: x\n\n".encode()])
    assert events == [SseEvent("message", "x", None, retry_ms)]
