"""A call's life apart from its POST connection: a dropped resumable stream does not withdraw it, a request does.

Streamable HTTP (2025-03-26 … 2025-11-25, "Sending Messages to the Server"): "Disconnection SHOULD NOT
be interpreted as the client cancelling its request. To cancel, the client SHOULD explicitly send an
MCP `CancelledNotification`." Once a POST answer has become an SSE stream and an event with an id has
gone out, the client can resume that stream (GET + `Last-Event-ID`, gateway/http/session_stream.py), so
when its connection drops the call is detached instead: it runs to its end, and its later events and
its answer are kept in the stream's replay buffer (`StreamReplay`, bounded as ever) for the resume.

Still withdrawn when the connection drops: a call whose client holds no id to resume with (a JSON answer
pending, or a stream that carried only keep-alive comments), a call held for approval (the approve stage
sees `gone` and withdraws it, docs/approvals.md), and calls this module does not watch (batches, and
stateless 2026-07-28 calls: that revision cancels by closing the stream). A detached call stays in
`session.inflight`, so `notifications/cancelled`, the session's end (DELETE, expiry) and shutdown still
end it, through its `Withdrawal`.

How: the gateway is served with aiohttp's handler cancellation on (a dropped client cancels its handler,
which withdraws the call and tells the upstream). `Disconnects` sits in aiohttp's `Server.connection_lost`,
which the connection calls just before it reads `handler_cancellation` to decide whether to cancel its
handler, and turns the cancellation off for that one connection when the call it is answering has a
resumable stream. The call then simply goes on. (Shielding each such call from the handler's cancellation
did the same at ~70k instructions a call, 5 % of a proxied call, for the rare call whose client drops.)
`gateway.app.serving_runner` builds the runner that way; an app served by a plain `AppRunner` withdraws
every call on a drop, as before streams were resumable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.http.streams import ResponseChannel

Lost = Callable[[Any, BaseException | None], None]  # Server.connection_lost(handler, exc)


class Disconnects:
    """The calls in flight whose stream a dropped connection must not end, by connection (aiohttp's
    request handler: one request at a time each)."""

    def __init__(self) -> None:
        self._watched: dict[Any, tuple[ResponseChannel, asyncio.Event]] = {}
        self.installed = False

    def install(self, server: web.Server, cancel: bool = True) -> None:
        """Wrap `server.connection_lost`: each lost connection decides its own handler cancellation."""
        original: Lost = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            entry = self._watched.pop(handler, None)
            keep = entry is not None and entry[0].resumable
            # Read by aiohttp right after this returns, for this connection only (no await in between).
            server.handler_cancellation = cancel and not keep
            if keep and entry is not None:
                channel, gone = entry
                channel.detach()
                gone.set()  # the client went away: a call held for approval is withdrawn on it
            original(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        self.installed = True

    def watch(self, request: web.BaseRequest, channel: ResponseChannel, gone: asyncio.Event) -> Any:
        """Until `forget(key)`: if `request`'s connection drops while `channel` is resumable, the call goes on."""
        key = request.protocol
        self._watched[key] = (channel, gone)
        return key

    def forget(self, key: Any) -> None:
        self._watched.pop(key, None)


class Withdrawal:
    """A handle on the task answering one request: `cancel()` withdraws the call, not the HTTP request."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        assert task is not None, "handlers run in a task"
        self.task = task
        self.requested = False
        self.reason = "request_cancelled"  # what the withdrawn call is answered

    def cancel(self, reason: str = "request_cancelled") -> None:
        # From inside the call itself (say, it ended its own session) there is nothing to withdraw: it is
        # finishing, and a cancellation it raised into itself would land after the answer was chosen.
        if not self.requested and asyncio.current_task() is not self.task:
            self.requested = True
            self.reason = reason
            self.task.cancel()

    def absorb(self) -> None:
        """The withdrawal was handled: the task goes on (to answer request_cancelled) as if never cancelled."""
        self.task.uncancel()
