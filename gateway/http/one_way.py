"""Client messages that get no JSON-RPC answer: notifications, and answers to server→client requests.

Answers go back to the upstream that asked (by the gateway id it was sent with), `notifications/cancelled`
cancels the call in flight, the gateway's own task end revokes what was minted for the task, and other
notifications go to the session's upstreams. Split from gateway/http/mcp.py; legacy SSE and batches use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import jsonrpc
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.server_messages import notified_upstreams, upstream_of
from gateway.sessions import Session

log = logging.getLogger("customs.http")  # the endpoint's logger, as before the split

TASK_END = "notifications/customs/task_end"  # params {"task": <the id sent in _meta["customs/task"]>}
TaskEnd = Callable[[Principal, str], Awaitable[None]]


async def accept_one_way(observability: Any, on_task_end: TaskEnd | None, session: Session,
                         message: jsonrpc.Message, principal: Principal | None = None, *,
                         http: web.Request | None = None, times: tuple[int, int] | None = None) -> None:
    """Client notifications and answers to server→client requests: 202 (a task end that fails: an error).
    A notification gets a SERVER span and a duration, as the MCP conventions ask (not on a call's path).
    `observability`: gateway.telemetry.observability.Observability, or None."""
    if message.kind != "notification" or observability is None:
        await _one_way(observability, on_task_end, session, message, principal)
        return
    with observability.request(http.headers if http is not None else None, message.method, message.params,
                               None, principal=principal or session.principal,
                               session_id=None if session.stateless else session.id,
                               protocol_version=session.protocol_version,
                               start_ns=times[0] if times else None, identify_ns=times, http=http):
        await _one_way(observability, on_task_end, session, message, principal)


async def _one_way(observability: Any, on_task_end: TaskEnd | None, session: Session, message: jsonrpc.Message,
                   principal: Principal | None) -> None:
    if message.kind == "response":
        # Taken (202) even if passing it on fails, as notifications are (below).
        route = session.server_requests.pop(str(message.id), None)
        upstream = upstream_of(session, route) if route is not None else None
        if route is not None and upstream is not None:
            with contextlib.suppress(GatewayError):
                await upstream.respond({**message.body, "id": route.upstream_id})
        return
    method = message.method
    if method == "notifications/initialized":
        return
    if method == TASK_END:
        await _end_task(on_task_end, principal or session.principal, message.params.get("task"))
        return
    if method == "notifications/cancelled":
        # 2026-07-28 has no client notifications: a client cancels by closing the call's stream, and
        # the ids of stateless clients sharing the session may repeat (as the SDK's server: dropped).
        if session.stateless:
            return
        request_id = message.params.get("requestId")
        # Ids are strings or integers; anything else (a list, an object, true: Python's True equals 1) names no call.
        task = session.inflight.get(request_id) if jsonrpc.is_id(request_id) else None
        if task is not None:
            task.cancel()
        return
    notify = observability.notify_upstream if observability is not None else None

    async def one(name: str, upstream: Any) -> None:
        with contextlib.suppress(GatewayError):
            await (notify(name, upstream, message.body) if notify else upstream.notify(message.body))
    # At once: one slow upstream (each is bounded by its timeout_s) must not hold the others' copy back.
    await asyncio.gather(*(one(name, upstream) for name, upstream in notified_upstreams(session, message.body)))


async def _end_task(on_task_end: TaskEnd | None, principal: Principal | None, task: Any) -> None:
    """The agent says its task is over: revoke what was minted for it (never forwarded upstream)."""
    if not jsonrpc.is_task_id(task):
        raise GatewayError("invalid_request", "Invalid request: task_end needs params.task, the task id")
    if on_task_end is None or principal is None:
        return
    try:
        await on_task_end(principal, task)
    except GatewayError:
        raise
    except Exception as exc:  # the store is down: say so, the agent may retry (tokens still expire)
        log.warning("could not end task %r: %s", task, exc)
        raise GatewayError("internal_error", "Could not end the task; retry") from exc
