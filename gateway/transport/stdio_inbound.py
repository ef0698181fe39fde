"""What a stdio child writes on stdout, one line at a time: responses to their waiters, the rest routed.

Batches: only the 2025-03-26 revision has JSON-RPC batches (it added them: implementations MUST support
receiving them; 2025-06-18 removed them), as at the agent edge (gateway/http/batch.py). A child that
negotiated 2025-03-26 may answer in a batch, so each message of it is handled as if it came on a line of
its own. Under any other revision a batch breaks the protocol: the requests it answers fail at once with
upstream_error (instead of waiting for upstream_timeout) and the rest of it is dropped with a warning.

A line past the 16 MiB cap of one message cannot be parsed, so it is read to its end and dropped: when its
start shows an answer (`"result"` or `"error"` after at most `jsonrpc` and `id`) whose id is at its start (the
Python SDK's order) or is its last member (the TypeScript SDK's), the request it answers fails at once with
upstream_error, as over HTTP, instead of at its timeout. A request or notification of the child's answers nothing.

A message with NaN, Infinity or -Infinity literals (Python's parser reads them, JSON has no such numbers)
or a number no double holds (1e400, read as infinity) is refused as upstream_error, like on the HTTP
transports (events.parse_json): the request it answers fails at once, anything else in it is dropped
with a warning.

An answer whose `error` is no JSON-RPC error object (no integer `code`, no string `message`) fails its request
with upstream_error (the table's check_response, as on every transport). A message whose `method` is no string
is dropped with a warning (a request of the child's is answered Invalid Request): routed, a list or an object
raised a TypeError that ended this reader. A request whose id is null (MCP: MUST NOT) or no string or integer is
dropped with a warning, unanswered: no answer could name it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from gateway.errors import INVALID_REQUEST, GatewayError
from gateway.jsonrpc import is_id
from gateway.transport.base import Message
from gateway.transport.common import BATCH_REVISIONS
from gateway.transport.events import EDGE, MAX_MESSAGE_BYTES, NotJson, Oversized, parse_json
from gateway.transport.inflight import InflightTable


async def read_line(stream: asyncio.StreamReader) -> bytes | Oversized:
    """The next line (b"" at the end); one past the stream's limit is read to its end, keeping only its edges
    (asyncio's readline drops what it buffered of it and goes on mid-line: the rest would be read as a line)."""
    try:
        return await stream.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError as exc:
        first = await stream.read(exc.consumed)
    tail = first[-EDGE:]
    while True:
        try:
            rest = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            rest = exc.partial
        except asyncio.LimitOverrunError as exc:
            tail = (tail + await stream.read(exc.consumed))[-EDGE:]
            continue
        return Oversized(first[:EDGE], (tail + rest)[-EDGE:])


class StdoutReader:
    """Turns a child's stdout lines into resolved waiters and routed messages."""

    def __init__(self, table: InflightTable, route: Callable[[Message], Awaitable[None]],
                 protocol: Callable[[], str], log: logging.Logger,
                 write: Callable[[Message], Awaitable[None]]) -> None:
        self._table = table
        self._route = route
        self._write = write  # to the child (answering a request it sent that no session can be given)
        self._protocol = protocol  # the revision the child negotiated (decides whether batches are allowed)
        self._log = log

    async def dispatch(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            self._oversized(line)
            return
        text = line.strip()
        if not text:
            return
        try:
            message = parse_json(text)
        except NotJson as exc:
            self._fail(exc.answers, exc)
            return
        except GatewayError:
            self._log.warning("ignoring non-JSON output: %.200s", text.decode(errors="replace"))
            return
        if not isinstance(message, list):
            await self._one(message)
        elif self._protocol() in BATCH_REVISIONS:
            for item in message:
                await self._one(item)
        else:
            error = GatewayError("upstream_error", f"upstream sent a JSON-RPC batch, which protocol "
                                 f"{self._protocol()} does not allow")
            self._fail([m.get("id") for m in message if isinstance(m, dict) and "method" not in m], error)

    def _oversized(self, line: Oversized) -> None:
        answered = line.answered_id()
        error = GatewayError("upstream_error", f"upstream sent a message over {MAX_MESSAGE_BYTES} bytes")
        failed = answered is not None and self._table.fail(answered, error)
        self._log.error("%s; %s", error.message, f"failed the request it answered ({answered})" if failed
                        else "dropped it")

    def _fail(self, ids: list[Any], error: GatewayError) -> None:
        failed = [i for i in ids if self._table.fail(i, error)]
        self._log.warning("%s; %s", error.message,
                          f"failed the request(s) it answered: {failed}" if failed else "dropped it")

    async def _one(self, message: Any) -> None:
        if not isinstance(message, dict):
            self._log.warning("ignoring a non-object message")
        elif "method" not in message:
            # (An answer whose `error` is no JSON-RPC error object fails its request there: check_response.)
            if not self._table.resolve(message):
                self._log.debug("response for unknown id %r ignored", message.get("id"))
        elif "id" in message and not is_id(message["id"]):
            # A request with id null (MCP: MUST NOT) or another id no answer could name: dropped before routing,
            # which would answer a `ping` with that id and remember it as the request a client was asked.
            self._log.warning("ignoring a message whose id is not a string or an integer: method %.100r, id %.100r",
                              message.get("method"), message.get("id"))
        elif not isinstance(message["method"], str):
            await self._invalid(message)
        else:
            await self._route(message)

    async def _invalid(self, message: Message) -> None:
        """A request or notification whose method is no string: no session can be given it (its routing raised a
        TypeError that ended the reader, restarting the child; a number went to the agent as a method). A request
        is answered (Invalid Request) so the child does not wait for good."""
        self._log.warning("ignoring a message whose method is not a string: %.200r", message.get("method"))
        if "id" in message:
            answer = {"jsonrpc": "2.0", "id": message["id"],
                      "error": {"code": INVALID_REQUEST, "message": "method is not a string"}}
            with suppress(GatewayError):  # the child is gone: nobody waits for this answer any more
                await self._write(answer)
