"""What a stdio child writes on stdout, one line at a time: responses to their waiters, the rest routed.

Batches: only the 2025-03-26 revision has JSON-RPC batches (it added them: implementations MUST support
receiving them; 2025-06-18 removed them), as at the agent edge (gateway/http/batch.py). A child that
negotiated 2025-03-26 may answer in a batch, so each message of it is handled as if it came on a line of
its own. Under any other revision a batch breaks the protocol: the requests it answers fail at once with
upstream_error (instead of waiting for upstream_timeout) and the rest of it is dropped with a warning.

A message with NaN, Infinity or -Infinity literals (Python's parser reads them, JSON has no such numbers)
or a number no double holds (1e400, read as infinity) is refused as upstream_error, like on the HTTP
transports (events.parse_json): the request it answers fails at once, anything else in it is dropped
with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.events import NotJson, parse_json
from gateway.transport.inflight import InflightTable

BATCH_REVISIONS = frozenset({"2025-03-26"})


class StdoutReader:
    """Turns a child's stdout lines into resolved waiters and routed messages."""

    def __init__(self, table: InflightTable, route: Callable[[Message], Awaitable[None]],
                 protocol: Callable[[], str], log: logging.Logger) -> None:
        self._table = table
        self._route = route
        self._protocol = protocol  # the revision the child negotiated (decides whether batches are allowed)
        self._log = log

    async def dispatch(self, line: bytes) -> None:
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

    def _fail(self, ids: list[Any], error: GatewayError) -> None:
        failed = [i for i in ids if self._table.fail(i, error)]
        self._log.warning("%s; %s", error.message,
                          f"failed the request(s) it answered: {failed}" if failed else "dropped it")

    async def _one(self, message: Any) -> None:
        if not isinstance(message, dict):
            self._log.warning("ignoring a non-object message")
        elif "method" not in message:
            if not self._table.resolve(message):
                self._log.debug("response for unknown id %r ignored", message.get("id"))
        else:
            await self._route(message)
