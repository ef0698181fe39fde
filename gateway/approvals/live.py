"""The approvers' page's live updates: a server-sent event stream of changed approval ids per open page.

Ids only, and only of calls the person may see: the page refetches what it may see. Each stream ends when its
credential would no longer be accepted (the token's expiry; a session cookie: at most MAX_SESSION_S), when its
token is signed out on this replica (cookie and bearer streams alike: the cookie is the token), or when shutdown
begins; a reconnect must be signed in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from aiohttp import web

from gateway.approvals import render
from gateway.approvals.auth import MAX_SESSION_S, Approver
from gateway.approvals.model import Approval, ApprovalNotFound
from gateway.approvals.store import ApprovalStore
from gateway.errors import GatewayError


def _valid_for(approver: Approver) -> float | None:
    """Seconds until the approver's credential would be refused (None: it does not expire)."""
    left = [float(MAX_SESSION_S)] if approver.via == "cookie" else []  # the cookie's own lifetime bounds it
    if approver.principal.expires_at is not None:
        left.append(approver.principal.expires_at - time.time())
    return max(0.0, min(left)) if left else None


class LiveUpdates:
    """The open live-update streams of one replica."""

    def __init__(self, store: ApprovalStore, keepalive_s: float, closing: asyncio.Event,
                 may_view: Callable[[Approver, Approval], bool]) -> None:
        self._store = store
        self._may_view = may_view
        self._keepalive_s = keepalive_s
        self._closing = closing  # set when the gateway begins to shut down
        # Open streams per token (Approver.key, a digest: the token itself is not kept), ended by its sign-out.
        self._streams: dict[str, set[asyncio.Event]] = {}

    def sign_out(self, key: str) -> None:
        """End the streams opened with the token of digest `key` (the session's other tabs, and the token used
        as a bearer token), on this replica."""
        for signed_out in self._streams.pop(key, set()):
            signed_out.set()

    async def stream(self, request: web.Request, approver: Approver) -> web.StreamResponse:
        """The stream for one open page, its credential checked by the caller when it opens."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=256)

        def listener(approval_id: str) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a slow page just refetches later
                queue.put_nowait(approval_id)

        headers = {**render.security_headers(), "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # aiohttp routes HEAD here too: the head alone, no stream behind it
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        signed_out = asyncio.Event()
        session = approver.key or None
        if session is not None:
            self._streams.setdefault(session, set()).add(signed_out)
        self._store.add_listener(listener)
        # A page left open is no work to drain: the stream ends when shutdown begins (the page reconnects to
        # another replica or after the restart), else the server would wait out its drain timeout twice.
        ended = asyncio.ensure_future(self._over(approver, signed_out))
        change = asyncio.ensure_future(queue.get())
        try:
            await response.write(b": connected\n\n")
            while True:
                await asyncio.wait((change, ended), timeout=self._keepalive_s, return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    break
                if not change.done():
                    await response.write(b": keep-alive\n\n")
                    continue
                approval_id, change = change.result(), asyncio.ensure_future(queue.get())
                if await self._shown_to(approver, approval_id):
                    await response.write(f"event: change\ndata: {json.dumps({'id': approval_id})}\n\n".encode())
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        finally:
            ended.cancel()
            change.cancel()
            self._store.remove_listener(listener)
            if session is not None:
                self._forget(session, signed_out)
        return response

    async def _shown_to(self, approver: Approver, approval_id: str) -> bool:
        """Whether this person may see the call: the id of one policy hides from them (another team's payment)
        would tell them that it exists and when it moves. Not found or store unreachable: not told (the page
        refetches on its own every 30 s)."""
        try:
            return self._may_view(approver, await self._store.get(approval_id))
        except (ApprovalNotFound, GatewayError):
            return False

    async def _over(self, approver: Approver, signed_out: asyncio.Event) -> None:
        """Returns when a stream must end: its credential lapsed or signed out, or shutdown began."""
        waits = (asyncio.ensure_future(self._closing.wait()), asyncio.ensure_future(signed_out.wait()))
        try:
            await asyncio.wait(waits, timeout=_valid_for(approver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _forget(self, session: str, signed_out: asyncio.Event) -> None:
        streams = self._streams.get(session)
        if streams is not None:
            streams.discard(signed_out)
            if not streams:
                del self._streams[session]
