"""Which client session gets what a shared stdio child sends unprompted (progress, logs, requests).

All client sessions share one child, and the stdio wire does not say which request a log line or
a server→client request (sampling, elicitation, roots) serves: the SDKs keep that link
(`related_request_id`) in transport metadata that only HTTP transports use. So:

- progress is exact: each forwarded request carries its own upstream progress token (its upstream
  id), mapped back to the caller's token and handler;
- anything else goes to a session only when it provably owns it: every request still live on the
  child (answer not read yet, abandoned ones included) belongs to that one session, or no request
  is live and it is the only session connected;
- otherwise a notification is dropped (logged at DEBUG) and a server→client request is answered
  with a JSON-RPC error (`data.reason` `client_unknown`): never a guess that could cross principals;
- `notifications/resources/updated` goes only to the sessions that subscribed to that URI (the
  child holds one subscription for all of them: a session's unsubscribe reaches it only when no
  other session still holds the URI);
- `logging/setLevel` sets one level for all sessions at the child, so the child is given the most
  verbose level any session wants (a session that set none counts as `debug`) and each session's own
  level filters the log lines it is given: one session's level never silences another's logs;
- a gateway-internal view (`ConnectParams.internal`: the pin watcher's own list) has no client, so
  it never counts as a session here and its requests never make another session look shared;
- a URL-mode `elicitation/create` is remembered by its `elicitationId`, so the child's
  `notifications/elicitation/complete` for it (typically sent after the call was answered) goes to the
  session that was asked;
- `ping` from the child is answered here (the child's MCP session is the gateway's);
- the child's `notifications/cancelled` for one of its requests goes to the session that got it,
  and only that session may answer it; a session that ends refuses what it still owes
  (`client_gone`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol

from gateway.errors import INTERNAL_ERROR, GatewayError
from gateway.transport.base import Message, MessageHandler
from gateway.transport.common import BROADCAST_METHODS, LOG_LEVELS, id_key
from gateway.transport.http_base import deliver
from gateway.transport.inflight import InflightTable

WriteFn = Callable[[Message], Awaitable[None]]
Exchange = Callable[[Message], Awaitable[Message]]  # a request to the child, answered
SUBSCRIPTION_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
MAX_ELICITATIONS = 256  # URL-mode elicitations awaiting their completion notice (oldest forgotten first)
UNKNOWN_CLIENT = "Customs cannot tell which client session this request is for (shared stdio upstream)"


class View(Protocol):
    on_message: MessageHandler
    internal: bool


def refusal(request_id: Any, reason: str, text: str) -> Message:
    return {"jsonrpc": "2.0", "id": request_id,
            "error": {"code": INTERNAL_ERROR, "message": text, "data": {"reason": reason}}}


class StdioRoutes:
    """The connected views of one child and the server→client requests each of them was given."""

    def __init__(self, table: InflightTable, write: WriteFn, gateway_owner: object, log: logging.Logger) -> None:
        self._table = table
        self._write = write
        self._gateway = gateway_owner  # owner of the gateway's own requests (initialize, ping)
        self._log = log
        self.views: list[View] = []  # client sessions' views (internal ones are not listed)
        self._asked: dict[tuple[str, Any], View] = {}  # server→client request id -> the view that got it
        self._subscribers: dict[str, list[View]] = {}  # resource URI (the child's own) -> subscribed views
        self._levels: dict[View, int] = {}  # logging/setLevel per view (index in LOG_LEVELS)
        self._child_level: int | None = None  # the level last set at the child (None: its own default)
        self._elicitations: dict[str, View] = {}  # URL-mode elicitationId -> the view that was asked

    def attach(self, view: View) -> None:
        if not view.internal:
            self.views.append(view)

    async def detach(self, view: View) -> list[str]:
        """Forget the view; the URIs no view is subscribed to any more (the child should be told)."""
        if view in self.views:
            self.views.remove(view)
        self._levels.pop(view, None)
        for elicitation in [k for k, asker in self._elicitations.items() if asker is view]:
            del self._elicitations[elicitation]
        held = [uri for uri, views in self._subscribers.items() if view in views]
        orphans = [uri for uri in held if not self.unsubscribe(view, uri)]
        for key, asked in list(self._asked.items()):
            if asked is view:
                del self._asked[key]
                await self._send(refusal(key[1], "client_gone", "The client session ended"))
        return orphans

    def restarted(self) -> None:
        """A new child: the old one's server→client request ids mean nothing any more. The sessions'
        subscriptions are kept: the new child is subscribed again (`held_uris`), its sessions never ended."""
        self._asked.clear()
        self._child_level = None
        self._elicitations.clear()

    def held_uris(self) -> list[str]:
        return [uri for uri, views in self._subscribers.items() if views]

    async def subscription(self, view: View, message: Message, exchange: Callable[[], Awaitable[Message]]) -> Message:
        """A view's resources/(un)subscribe, sent to the child by `exchange` unless another view still
        holds the child's one subscription to that URI (then unsubscribing there would end theirs)."""
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            return await exchange()  # the child answers the malformed request itself
        if message.get("method") == "resources/unsubscribe":
            if self.unsubscribe(view, uri):
                return {"jsonrpc": "2.0", "id": message.get("id"), "result": {}}
            return await exchange()
        added = self.subscribe(view, uri)  # before sending: an update may come before the answer
        try:
            response = await exchange()
        except BaseException:
            if added:
                self.unsubscribe(view, uri)
            raise
        if added and "error" in response:
            self.unsubscribe(view, uri)
        return response

    async def set_level(self, view: View, message: Message, exchange: Exchange) -> Message:
        """A view's logging/setLevel: kept as that view's filter; the child is sent the most verbose level
        of all views (only when that changes), since its one level decides what every session can get."""
        params = message.get("params")
        level = params.get("level") if isinstance(params, dict) else None
        if not isinstance(params, dict) or level not in LOG_LEVELS:
            return await exchange(message)  # the child answers the malformed request itself
        self._levels[view] = LOG_LEVELS.index(level)
        answer = await self.relevel(exchange, message)
        return answer if answer is not None else {"jsonrpc": "2.0", "id": message.get("id"), "result": {}}

    async def relevel(self, exchange: Exchange, request: Message | None = None) -> Message | None:
        """Set the child's level to the most verbose one any view wants (a view that set none: debug) when
        that differs from the level last set; None when nothing was sent (no view set a level, or no change)."""
        wanted = min((self._levels.get(v, 0) for v in self.views), default=None) if self._levels else None
        if wanted is None or wanted == self._child_level:
            return None
        message = request or {"jsonrpc": "2.0", "id": None, "method": "logging/setLevel", "params": {}}
        response = await exchange({**message, "params": {**message["params"], "level": LOG_LEVELS[wanted]}})
        if "error" not in response:
            self._child_level = wanted
        return response

    @property
    def levels_set(self) -> bool:
        return bool(self._levels)

    def _filtered(self, view: View, message: Message) -> bool:
        """A log line below the level its session set (the child may send more: another session wants it)."""
        level = self._levels.get(view)
        if level is None or message.get("method") != "notifications/message":
            return False
        params = message.get("params")
        line = params.get("level") if isinstance(params, dict) else None
        return line in LOG_LEVELS and LOG_LEVELS.index(line) < level

    def subscribe(self, view: View, uri: str) -> bool:
        """Record the view's subscription; False when it already had it."""
        views = self._subscribers.setdefault(uri, [])
        if view in views:
            return False
        views.append(view)
        return True

    def unsubscribe(self, view: View, uri: str) -> bool:
        """Drop the view's subscription; True when other views still hold the URI (keep it at the child)."""
        views = self._subscribers.get(uri, [])
        if view in views:
            views.remove(view)
        if not views:
            self._subscribers.pop(uri, None)
        return bool(views)

    def is_subscribed(self, uri: str) -> bool:
        return uri in self._subscribers

    def may_answer(self, view: View, message: Message) -> bool:
        """True once for the view that was given this server→client request (its answer goes upstream)."""
        key = id_key(message.get("id"))
        if self._asked.get(key) is not view:
            return False
        del self._asked[key]
        return True

    async def route(self, message: Message) -> None:
        method = message.get("method")
        if method == "notifications/resources/updated":
            await self._updated(message)
        elif method in BROADCAST_METHODS:
            for view in list(self.views):
                await deliver(view.on_message, message, self._log)
        elif method == "ping" and "id" in message:
            await self._send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
        elif method == "notifications/progress":
            await self._progress(message)
        elif method == "notifications/elicitation/complete" and (asker := self._asker(message)) is not None:
            await deliver(asker.on_message, message, self._log)
        elif method == "notifications/cancelled":
            params = message.get("params")
            asked = self._asked.pop(id_key(params.get("requestId")), None) if isinstance(params, dict) else None
            if asked is not None:
                await deliver(asked.on_message, message, self._log)
        else:
            await self._to_owner(message)

    async def _send(self, message: Message) -> None:
        with suppress(GatewayError):  # the child is gone: nobody is waiting for this answer any more
            await self._write(message)

    async def _updated(self, message: Message) -> None:
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        views = list(self._subscribers.get(uri, [])) if isinstance(uri, str) else []
        if not views:
            self._log.debug("resource update for %.200r dropped: no session subscribed to it", uri)
        for view in views:
            await deliver(view.on_message, message, self._log)

    async def _progress(self, message: Message) -> None:
        params = message.get("params")
        pending = self._table.progress_target(params.get("progressToken")) if isinstance(params, dict) else None
        if pending is None or not isinstance(params, dict):
            self._log.debug("progress for no request in flight dropped")
            return
        restored = {**message, "params": {**params, "progressToken": pending.progress_token}}
        owner = pending.owner if pending.owner in self.views else None
        await deliver(pending.on_message or (owner.on_message if owner else None), restored, self._log)

    async def _to_owner(self, message: Message) -> None:
        view, handler, guessed = self._owner()
        if view is not None:
            if self._filtered(view, message):
                return
            if "id" in message:
                self._asked[id_key(message["id"])] = view
                self._remember_elicitation(view, message)
            await deliver(handler, message, self._log, guessed)
        elif "id" in message:
            self._log.warning("refused %s from the child: %s", message.get("method"), UNKNOWN_CLIENT)
            await self._send(refusal(message["id"], "client_unknown", UNKNOWN_CLIENT))
        else:
            self._log.debug("dropped %s: no single client session owns it: %.200s",
                            message.get("method"), message.get("params"))

    def _remember_elicitation(self, view: View, message: Message) -> None:
        params = message.get("params")
        if message.get("method") == "elicitation/create" and isinstance(params, dict) and params.get("mode") == "url":
            if isinstance(params.get("elicitationId"), str):
                if len(self._elicitations) >= MAX_ELICITATIONS:
                    del self._elicitations[next(iter(self._elicitations))]
                self._elicitations[params["elicitationId"]] = view

    def _asker(self, message: Message) -> View | None:
        """The view that was asked for the URL-mode elicitation this completion notice names (forgotten now)."""
        params = message.get("params")
        key = params.get("elicitationId") if isinstance(params, dict) else None
        return self._elicitations.pop(key, None) if isinstance(key, str) else None

    def _owner(self) -> tuple[View | None, MessageHandler | None, bool]:
        """The one view that provably caused an unlinked message, with the handler to use, if any, and whether
        that handler's call is a guess (the view has several calls live: the latest one's stream gets it)."""
        # The gateway's own requests (its pings, an internal view's list) cause nothing a client must get.
        live = [p for p in self._table.live()
                if p.owner is not self._gateway and not getattr(p.owner, "internal", False)]
        owners = {id(p.owner) for p in live}
        if not live:
            view = self.views[0] if len(self.views) == 1 else None
            return view, view.on_message if view is not None else None, False
        owner = live[-1].owner
        if len(owners) != 1 or owner not in self.views:
            return None, None, False
        calls = [p for p in live if not p.abandoned and p.on_message is not None]
        if not calls:
            return owner, owner.on_message, False
        return owner, calls[-1].on_message, len(calls) > 1
