"""In-flight request table for transports that multiplex one stream (legacy SSE, stdio).

Upstream ids are allocated here (one counter per stream, so they never collide across the
sessions sharing it); responses are matched back by id; a dead stream fails every waiter at once.

A request the caller gave up on (timeout, cancellation) can be kept as a *tombstone*: the upstream
may still be sending messages on its behalf, so it still counts as live (see `live`) until its late
answer arrives, the transport `forget`s it, or the stream dies. Shared stdio children use this to
attribute unsolicited messages only to a session that provably owns them (stdio_routes.py).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.transport.base import Message, MessageHandler
from gateway.transport.common import check_response, id_key, progress_token


@dataclass(eq=False)
class Pending:
    upstream_id: int
    caller_id: Any
    owner: object
    on_message: MessageHandler | None
    progress_token: Any
    future: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    abandoned: bool = False  # the caller gave up; the upstream may not have stopped yet

    @property
    def live(self) -> bool:
        """The upstream may still send messages on this request's behalf (no answer read yet)."""
        return self.abandoned or not self.future.done()


class InflightTable:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def next_id(self) -> int:
        return next(self._ids)

    def open(self, message: Message, owner: object, on_message: MessageHandler | None) -> Pending:
        pending = Pending(self.next_id(), message.get("id"), owner, on_message, progress_token(message))
        self._pending[pending.upstream_id] = pending
        return pending

    def discard(self, pending: Pending) -> None:
        """Drop a finished request; a tombstone stays until `forget` (or its answer, or `fail_all`)."""
        future = pending.future
        if future.done() and not future.cancelled():
            # Taken here: its waiter may have left before awaiting it (the write failed as the child
            # died and `fail_all` failed it), and asyncio logs a failure nobody took when it is freed.
            future.exception()
        if not pending.abandoned:
            self.forget(pending)

    def abandon(self, pending: Pending) -> None:
        if self._pending.get(pending.upstream_id) is pending:
            pending.abandoned = True
        pending.future.cancel()  # nobody awaits it now (a later `fail_all` would leave its failure untaken)

    def forget(self, pending: Pending) -> None:
        if self._pending.get(pending.upstream_id) is pending:
            del self._pending[pending.upstream_id]

    def resolve(self, message: Message) -> bool:
        """Complete the waiter for this response; False when no request has that id (late or unknown)."""
        upstream_id = message.get("id")
        known, future = self._answered(upstream_id)
        if future is not None:  # the table's key for it: an int equal to the answer's id
            try:
                future.set_result(check_response(message, upstream_id))
            except GatewayError as exc:
                future.set_exception(exc)
        return known

    def fail(self, upstream_id: Any, exc: GatewayError) -> bool:
        """Fail the waiter for this id with `exc` (its answer came but cannot be used); False if none waits."""
        known, future = self._answered(upstream_id)
        if future is not None:
            future.set_exception(exc)
        return known

    def _answered(self, upstream_id: Any) -> tuple[bool, asyncio.Future[Message] | None]:
        """An answer for `upstream_id` came: whether a request has that id, and the future still waiting for it."""
        pending = self._pending.get(upstream_id) if type(upstream_id) is int else None
        if pending is not None and pending.abandoned:
            self.forget(pending)  # the answer of a request nobody waits for: it is over now
            return True, None
        if pending is None or pending.future.done():
            return False, None
        return True, pending.future

    def fail_all(self, exc: GatewayError) -> None:
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()

    def upstream_id_for(self, owner: object, caller_id: Any) -> int | None:
        key = id_key(caller_id)
        for pending in reversed(self._pending.values()):
            if pending.owner is owner and not pending.abandoned and id_key(pending.caller_id) == key:
                return pending.upstream_id
        return None

    def live(self) -> list[Pending]:
        """Requests the upstream may still be working on, oldest first (tombstones included)."""
        return [pending for pending in self._pending.values() if pending.live]

    def progress_target(self, token: Any) -> Pending | None:
        """The request whose gateway-assigned progress token (its upstream id) this is."""
        pending = self._pending.get(token) if type(token) is int else None
        if pending is None or pending.progress_token is None or pending.abandoned:
            return None
        return pending

    def route(self, message: Message) -> tuple[Pending | None, Message, bool]:
        """Legacy SSE: the request an unsolicited message most likely belongs to, the message as its
        client must see it, and whether that request is a guess. Progress is exact (its token upstream is the
        request's upstream id, see `with_progress_token`; the client's own token is put back); anything else goes
        to the most recently started request, a guess when several are pending."""
        params = message.get("params")
        if message.get("method") == "notifications/progress" and isinstance(params, dict):
            pending = self.progress_target(params.get("progressToken"))
            if pending is None:
                return None, message, False
            return pending, {**message, "params": {**params, "progressToken": pending.progress_token}}, False
        return next(reversed(self._pending.values()), None), message, len(self._pending) > 1


def with_progress_token(message: Message, token: Any) -> Message:
    """The request with `params._meta.progressToken` replaced (only called when it has one)."""
    params = message["params"]
    return {**message, "params": {**params, "_meta": {**params["_meta"], "progressToken": token}}}
