"""Calls that outlive their POST connection: a dropped resumable stream does not withdraw its call.

Streamable HTTP (2025-03-26 … 2025-11-25, "Sending Messages to the Server"): "Disconnection SHOULD NOT
be interpreted as the client cancelling its request. To cancel, the client SHOULD explicitly send an
MCP `CancelledNotification`." Once a POST answer has become an SSE stream and an event with an id has
gone out, the client can resume that stream (GET + `Last-Event-ID`, gateway/http/session_stream.py), so
when its connection drops the call is detached instead: it runs to its end, and its later events and
its answer are kept in the stream's replay buffer (`StreamReplay`, bounded as ever) for the resume.

Still withdrawn when the connection drops: a call whose client holds no id to resume with (a JSON answer
pending, or a stream that carried only keep-alive comments), a call held for approval (the approve stage
sees `gone` and withdraws it, docs/approvals.md), and calls this module does not run (batches, and
stateless 2026-07-28 calls: that revision cancels by closing the stream). A detached call stays in
`session.inflight` (which also keeps its task referenced), so `notifications/cancelled`, the session's
end (DELETE, expiry) and shutdown still end it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from gateway.http.streams import ResponseChannel

log = logging.getLogger("customs.http")

Outcome = tuple[dict[str, Any], int, dict[str, str]]  # (reply, HTTP status of its error, headers of its error)


async def outlive_disconnect(call: Coroutine[Any, Any, Outcome], channel: ResponseChannel,
                             gone: asyncio.Event) -> Outcome:
    """Run `call` (one `McpEndpoint.run_call`) in a task of its own, so that aiohttp cancelling the handler
    when the client drops reaches the call only if its stream cannot be resumed. `gone` is set when the
    call is detached (the client went away: a call held for approval is withdrawn on it)."""
    task = asyncio.get_running_loop().create_task(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if channel.resumable:
            channel.detach()
            gone.set()
            task.add_done_callback(functools.partial(_keep_answer, channel))
        else:  # nothing to resume with: withdrawn as the handler's own call was before (cleanup awaited)
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: it was answered to nobody
        raise


def _keep_answer(channel: ResponseChannel, task: asyncio.Task[Outcome]) -> None:
    """A detached call ended: its answer becomes its stream's last kept event, and the stream ends."""
    reply: dict[str, Any] | None = None
    if not task.cancelled():
        error = task.exception()
        if error is None:
            reply = task.result()[0]
        else:  # run_call answers every failure; this is a refusal before it ran, or a bug
            log.warning("a call detached from its connection failed: %r", error)
    channel.keep_answer(reply)
