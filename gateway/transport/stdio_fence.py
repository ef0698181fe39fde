"""The ping fence of a shared stdio child: when a request the caller gave up on stops counting as live.

A call given up on (timeout, cancellation) may still be running on the child, and what it sends
meanwhile must not be taken for another session's (stdio_routes.py), so it stays in the in-flight
table as a tombstone. Once the child answers a `ping` written after the call's
`notifications/cancelled`, everything the call sent before it stopped has been read: the tombstone
can go. A late answer is the same proof, so a ping is still awaited after `timeout_s` (WARNING).

One fence ping is outstanding per child at a time: its answer clears every request given up before
it was written; those given up later wait for the next one. So many timed-out calls cost one task
and one ping, not one each. A ping unanswered for STUCK_AFTER times `timeout_s` means the child is
stuck (running but answering nothing): left alone it would keep every tombstone, and make every
session look shared, until it exits on its own; `on_stuck` restarts it instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.inflight import InflightTable, Pending

STUCK_AFTER = 3  # a fence ping unanswered for this many timeout_s: the child is stuck


class StdinStalled(GatewayError):
    """A write to the child did not finish within its upstream's `timeout_s`: it is not reading its stdin
    (the pipe is full). A fence ping that cannot be written shows the child stuck as surely as one unanswered."""

    def __init__(self, upstream: str) -> None:
        super().__init__("upstream_unavailable", "upstream process is not reading its input",
                         data={"upstream": upstream})
PING: Message = {"jsonrpc": "2.0", "id": None, "method": "ping"}


class Fence:
    """Clears the tombstones of one child's given-up requests, one shared ping at a time."""

    def __init__(self, table: InflightTable, write: Callable[[Message], Awaitable[None]], owner: object,
                 timeout_s: float, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 on_stuck: Callable[[], Awaitable[None]], log: logging.Logger, name: str) -> None:
        self._table = table
        self._write = write
        self._owner = owner  # the pings are the gateway's own requests: they make no session look busy
        self._timeout_s = timeout_s
        self._spawn = spawn
        self._on_stuck = on_stuck
        self._log = log
        self._name = name
        self._waiting: list[Pending] = []  # given up on, not yet covered by a ping written after that
        self._running = False

    def add(self, abandoned: Pending) -> None:
        """Fence a request given up on; call it after its `notifications/cancelled` was written."""
        if not abandoned.abandoned:
            return  # it was answered, or its child is gone (with its table) already
        self._waiting.append(abandoned)
        if not self._running:
            self._running = True
            self._spawn(self._run())

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                if await self._ping():
                    for pending in batch:
                        self._table.forget(pending)
                # Otherwise the child exited or was restarted as stuck: its table went with it.
        finally:
            self._running = False

    async def _ping(self) -> bool:
        """Whether the child answered a ping written now; False when it is gone or stuck (restarted)."""
        ping = self._table.open(PING, self._owner, None)
        try:
            # The write is bounded too: a child that stopped reading fills its stdin pipe.
            async with asyncio.timeout(self._timeout_s * STUCK_AFTER):
                await self._write({**PING, "id": ping.upstream_id})
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await asyncio.shield(ping.future)
                except TimeoutError:
                    self._log.warning("upstream %s has not answered a ping in %ss; messages not tied to a request "
                                      "reach no session until it does", self._name, self._timeout_s)
                    await ping.future
        except StdinStalled:
            self._log.warning("upstream %s has not read its input in %ss: restarting it as stuck",
                              self._name, self._timeout_s)
            await self._on_stuck()
            return False
        except GatewayError:
            return False
        except TimeoutError:
            self._log.warning("upstream %s has not answered a ping in %ss: restarting it as stuck",
                              self._name, self._timeout_s * STUCK_AFTER)
            await self._on_stuck()
            return False
        finally:
            self._table.discard(ping)
        return True
