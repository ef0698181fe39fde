"""Decode Server-Sent Events and bounded bodies from an upstream's aiohttp response stream.

aiohttp's `readline` refuses lines over ~128 KiB, and tool results can be larger, so events are
split from raw chunks here, with a hard cap on the size of one event (and of a JSON body) so a
misbehaving upstream cannot make the gateway buffer without bound.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import parse_content_type

from gateway import jsonrpc
from gateway.errors import GatewayError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
EDGE = 256  # bytes kept of an oversized message's start and of its end: enough to find an answer's id
# An answer's start: `{`, then `"jsonrpc":"2.0"` and `"id":N` in either order (either may be absent), then its
# result or error. Only a request or notification has `method` there; an answer's id, if not here, is its last member.
_ANSWER_START = re.compile(rb'\s*\{(?:\s*"(?:jsonrpc"\s*:\s*"2\.0"|id"\s*:\s*(\d+))\s*,)*\s*"(?:result|error)"\s*:')
# The id as the last member (within a string a quote is escaped, so this is the object's own last member).
_ID_AT_END = re.compile(rb'"id"\s*:\s*(\d+)\s*\}\s*$')


@dataclass(frozen=True)
class Oversized:
    """A message past the size cap (a stdio line, an SSE event), read to its end and dropped: its first and last
    `EDGE` bytes, from which the id of the request it answers may be read."""

    head: bytes
    tail: bytes

    def answered_id(self) -> int | None:
        """The id of the request this line answers, when its edges show one (else None: not an answer, or unknown)."""
        start = _ANSWER_START.match(self.head)
        if start is None:
            return None
        if start.group(1) is not None:
            return int(start.group(1))
        end = _ID_AT_END.search(self.tail)
        return int(end.group(1)) if end is not None else None


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None
    retry_ms: int | None = None


@dataclass
class SseCursor:
    """How far a stream got, kept across reconnections: the last event id and `retry` the server sent.

    Unlike events, these also come from events without data (the priming event of a resumable
    stream is an id and a retry only), so a reader that may reconnect passes one to `iter_sse`."""

    last_id: str | None = None
    retry_ms: int | None = None


class _EventBuilder:
    """Accumulates the fields of one event (WHATWG EventSource parsing rules)."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.size = 0  # characters of data so far
        self.id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> None:
        if line.startswith(":"):
            return  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
            self.size += len(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.id = value
        elif name == "retry" and value.isdigit() and value.isascii():  # the SSE spec: ASCII digits only
            try:
                self.retry_ms = int(value)
            except ValueError:  # past int()'s 4,300 digits: no retry, as for any other non-number
                pass

    def take(self) -> SseEvent | None:
        """The finished event, or None when only comments/ids were seen (nothing to dispatch)."""
        event = SseEvent(self.event or "message", "\n".join(self.data), self.id, self.retry_ms) if self.data else None
        self.event, self.data, self.size, self.retry_ms = "", [], 0, None
        return event


async def iter_sse(content: aiohttp.StreamReader, max_event_bytes: int = MAX_MESSAGE_BYTES,
                   cursor: SseCursor | None = None,
                   oversized: Callable[[Oversized], None] | None = None) -> AsyncIterator[SseEvent]:
    """Yield events until the stream ends. An event past `max_event_bytes` raises GatewayError(upstream_error), or,
    given `oversized`, is read to its end without being kept and handed to it (a stream many calls share goes on).

    An event's `id` stays set on later events until a new id arrives (the "last event id" rule).
    `cursor`, when given, is updated at the end of every event, with or without data."""
    buffer = b""
    builder = _EventBuilder()
    last_id: str | None = None
    skipped: _Skipped | None = None  # an oversized event being read past
    async for chunk in content.iter_any():
        buffer += chunk
        while True:
            cut = _line_end(buffer)
            if cut is None:
                break
            end, width = cut
            raw, buffer = buffer[:end], buffer[end + width:]
            if skipped is not None:
                if raw or skipped.midline:
                    skipped.read(raw, midline=False)
                elif oversized is not None:  # the blank line that ends it
                    oversized(skipped.edges())
                    skipped = None
                continue
            line = raw.decode("utf-8", errors="replace")
            if line:
                builder.feed(line)
                if builder.size > max_event_bytes:  # (a chunk may hold a whole event past the cap)
                    skipped, builder = _skip(builder, oversized), _EventBuilder()
                continue
            last_id = builder.id if builder.id is not None else last_id
            if cursor is not None:
                cursor.last_id = last_id or cursor.last_id
                cursor.retry_ms = builder.retry_ms if builder.retry_ms is not None else cursor.retry_ms
            event = builder.take()
            if event is not None:
                yield SseEvent(event.event, event.data, last_id, event.retry_ms)
        if skipped is None and len(buffer) + builder.size > max_event_bytes:
            skipped, builder = _skip(builder, oversized), _EventBuilder()
        if skipped is not None:  # only its edges are kept (a trailing \r may be half of \r\n: kept for the next cut)
            taken = len(buffer) - (1 if buffer.endswith(b"\r") else 0)
            if taken > 0:
                skipped.read(buffer[:taken], midline=True)
                buffer = buffer[taken:]


def _skip(builder: _EventBuilder, oversized: Callable[[Oversized], None] | None) -> _Skipped:
    """The event being built is past the cap: read past it when `oversized` takes it, else refuse the stream."""
    if oversized is None:
        raise GatewayError("upstream_error", "upstream event too large")
    return _Skipped(builder.data)


class _Skipped:
    """An oversized event being read to its end: the start of its data, the last bytes read of it, and whether
    a line of it was cut mid-way (so a line end next ends that line, not the event)."""

    def __init__(self, data: list[str]) -> None:
        joined = "\n".join(data).encode()
        self.head = joined[:EDGE]
        self.tail = joined[-EDGE:]
        self.midline = False
        self._started = bool(data)

    def read(self, raw: bytes, *, midline: bool) -> None:
        if not self._started:  # the event's first line: its data is the message's start
            self.head = raw.removeprefix(b"data:").removeprefix(b" ")[:EDGE] if raw.startswith(b"data:") else b""
            self._started = True
        self.tail = (self.tail + raw)[-EDGE:]
        self.midline = midline

    def edges(self) -> Oversized:
        return Oversized(self.head, self.tail)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Position and width of the first line terminator (\\r\\n, \\n or \\r), if complete."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if cr + 1 == len(buffer):
        return None  # a lone \r at the end might be half of \r\n: wait for more
    return cr, 2 if buffer[cr + 1:cr + 2] == b"\n" else 1


def media_type(raw: str | None) -> str:
    """The media type of a Content-Type header value, as aiohttp's `content_type` property gives it (its own
    parser, which caches each value), without the property's two Python calls a read."""
    return "application/octet-stream" if raw is None else parse_content_type(raw)[0]


async def read_json_body(response: aiohttp.ClientResponse, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """The response body parsed as JSON, read with a size cap. Invalid or oversized → upstream_error.

    The cap is on the body as read: a compressed one (Content-Encoding) is inflated as it is read, so its
    Content-Length bounds nothing (a few kilobytes of gzip inflate to gigabytes) and it is counted chunk by chunk."""
    length = response.content_length  # (a property parsing the header: read once)
    if length is not None and length > max_bytes:
        raise GatewayError("upstream_error", "upstream response too large")
    if length is not None and response.headers.get("Content-Encoding", "identity") == "identity":
        return parse_json(await response.read())  # Content-Length bounds the read: no chunk loop
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise GatewayError("upstream_error", "upstream response too large")
    return parse_json(bytes(body))


class NotJson(GatewayError):
    """An upstream message Python's parser reads but that cannot be passed on as it was written: NaN,
    Infinity and -Infinity literals (not JSON at all), and numbers no double holds (`1e400`, valid JSON
    that Python reads as infinity).

    Written out again they would be `null` (or invalid JSON to the agent), so the message is refused as
    upstream_error; `answers` holds the ids of the responses in it (a batch may hold several), so a reader
    of a multiplexed stream (stdio, legacy SSE) can fail those requests at once instead of leaving them to
    time out.
    """

    def __init__(self, literal: str, message: Any, *, overflow: bool = False) -> None:
        problem = f"{literal} is out of range for a double" if overflow else f"{literal} is not a JSON number"
        super().__init__("upstream_error", f"upstream sent invalid JSON ({problem})")
        items = message if isinstance(message, list) else [message]
        self.answers: list[Any] = [m.get("id") for m in items if isinstance(m, dict) and "method" not in m]


def parse_json(raw: bytes | str) -> Any:
    try:
        return jsonrpc.fast_loads(raw)
    except ValueError:
        pass  # integers past 64 bits, lone surrogates, NaN: valid for Python's json, so decided there
    literals: list[str] = []
    overflows: list[str] = []  # orjson refuses these, so only this path meets them

    def constant(name: str) -> float:
        literals.append(name)
        return float(name)

    def number(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            overflows.append(text[:32])
        return value

    try:
        value = json.loads(raw, parse_constant=constant, parse_float=number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("upstream_error", "upstream sent invalid JSON") from exc
    except RecursionError as exc:  # escaping, it killed the one reader of a shared stdio child or SSE stream
        raise GatewayError("upstream_error", "upstream sent JSON nested too deeply") from exc
    if literals:
        raise NotJson(literals[0], value)
    if overflows:
        raise NotJson(overflows[0], value, overflow=True)
    return value
