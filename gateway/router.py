"""MCP methods → handlers: one table per view (aggregated `/mcp`, pass-through `/mcp/{upstream}`).

Calls that touch an upstream on a principal's behalf (tools/call, resources/read, prompts/get) go
through the pipeline; lists are fanned out and filtered by policy; requests about one prompt or
resource (completion/complete, resources/subscribe|unsubscribe) reach its upstream only when the
principal may see that item, logging/setLevel only upstreams where it may use a tool. Both views
answer any other method "method not found": nothing reaches an upstream undecided.

In the aggregated view a resource URI names its upstream (`customs://inventory/inventory://skus`, see
gateway/catalog.py); requests go upstream with the upstream's own URI, which is also what policy
decides on, and URIs in read results come back in the aggregated form. A URI naming no configured
upstream goes to the single upstream that lists it (gateway/resource_owners.py), if there is one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonrpc
from gateway.catalog import CURRENT_TOOL, MAX_TOOL_PAGES, PENDING_TOOL, Catalog, PendingTool, exposed_uri, not_found
from gateway.context import NOT_FOUND_ITEM, CallContext, Principal, ToolInfo
from gateway.credentials.tasks import named_task
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.listing import LISTS, Lister
from gateway.pinning import ToolGuard
from gateway.pipeline import Authorizer, Pipeline
from gateway.server_messages import NotificationHook, carried_scrub, route_server_message, scrub_error
from gateway.sessions import Session, SessionManager
from gateway.transport.base import Message, MessageHandler, UpstreamSession
from gateway.transport.common import LOG_LEVELS
from gateway.upstream_params import upstream_params, without_task

SERVER_INFO = {"name": "customs", "title": "Customs MCP gateway", "version": "0.1.0"}
SUBSCRIBE_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
# Methods 2026-07-28 removed (the SDK's per-version surface has none of them at that revision): a
# stateless client's subscription updates would reach nobody, and with no connection there is nothing
# for `ping` to keep alive; `logging/setLevel` would set the level of every client sharing the implicit
# session (that revision opts in per request, `_meta` `io.modelcontextprotocol/logLevel`, which the gateway applies
# itself, server_messages._below_level; upstream_params keeps it from the upstream).
STATELESS_REMOVED = SUBSCRIBE_METHODS | {"ping", "logging/setLevel"}


@dataclass
class Inbound:
    """One JSON-RPC request as the router sees it."""

    session: Session
    principal: Principal
    message: jsonrpc.Message
    send: Callable[[Message], Awaitable[None]] | None  # interim messages on this request's stream
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.message.params


Handler = Callable[[Inbound], Awaitable[dict[str, Any]]]
# (upstream, its session, message, headers, relay, timeout) -> response: the traced send (telemetry/upstream_calls.py)
UpstreamCall = Callable[[str, UpstreamSession, Message, dict[str, str], MessageHandler | None, float | None],
                        Awaitable[Message]]


class Router:
    """Dispatches requests by method; holds no per-call state."""

    def __init__(self, sessions: SessionManager, catalog: Catalog, pipeline: Pipeline, authorizer: Authorizer,
                 guard: ToolGuard, timeouts: Mapping[str, float], *, upstream_call: UpstreamCall | None = None,
                 notified: NotificationHook | None = None, scrub: Callable[[Any], Any] | None = None) -> None:
        self._sessions = sessions
        # The exact secrets the gateway holds taken out of what the router's own requests answer (a tool
        # description or a completion quoting the static key the upstream was given), as ForwardStage does for calls.
        self._scrub = scrub
        self._upstream_call = upstream_call  # None with tracing off: the plain send, nothing in between
        self._notified = notified  # what upstreams send during a call, traced (None: tracing off)
        self._catalog = catalog
        self._pipeline = pipeline
        self._guard = guard
        self._authorizer = authorizer
        self._lister = Lister(catalog, authorizer, guard)
        self._timeouts = timeouts
        # One table for both views: the handlers resolve names per view. A method not here is refused,
        # in the pass-through view too (fail closed: forwarding it would reach the upstream undecided).
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "tools/call": self._call_tool,
            "resources/read": self._read_resource,
            "prompts/get": self._get_prompt,
            "resources/subscribe": self._by_resource,
            "resources/unsubscribe": self._by_resource,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
            **{method: self._list for method in LISTS},
        }

    async def dispatch(self, inbound: Inbound) -> dict[str, Any]:
        method = inbound.message.method
        handler = self._handlers.get(method)
        if handler is None or (inbound.session.stateless and method in STATELESS_REMOVED):
            raise GatewayError("method_not_found", f"Method not found: {method}")
        return await handler(inbound)

    # -- upstream plumbing -------------------------------------------------------------------------

    async def fetch(self, inbound: Inbound, upstream: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A request the router makes on the client's behalf without the pipeline (lists, ping)."""
        session = await self._sessions.upstream_session(inbound.session, upstream)
        message = {"jsonrpc": "2.0", "id": inbound.message.id, "method": method,
                   "params": without_task(upstream_params(params))}
        headers = await self._sessions.headers(inbound.session, upstream)
        relay, timeout = self._relay(inbound, upstream), self._timeouts.get(upstream)
        try:
            if self._upstream_call is None:
                response = await session.request(message, headers=headers, on_message=relay, timeout=timeout)
            else:
                response = await self._upstream_call(upstream, session, message, headers, relay, timeout)
        except GatewayError as exc:  # a session re-opened in the request, refused by an upstream quoting its key
            scrub_error(self._scrub, exc)  # in place
            scrub_error(carried_scrub(inbound.session), exc)  # ... or the token it was sent (Session.carried)
            raise
        if self._scrub is not None:
            response = self._scrub(response)
        if (carried := carried_scrub(inbound.session)) is not None:  # a list, a completion quoting the session's token
            response = carried(response)
        if "error" in response:
            raise UpstreamErrorResponse(response["error"])
        result = response.get("result")
        if not isinstance(result, dict):
            raise GatewayError("upstream_error")
        return result

    def _relay(self, inbound: Inbound, upstream: str) -> Callable[[Message], Awaitable[None]]:
        async def relay(message: Message) -> None:
            if self._notified is None:
                await route_server_message(inbound.session, upstream, message, inbound.send, self._catalog, inbound)
                return
            route = functools.partial(route_server_message, inbound.session, upstream, send=inbound.send,
                                      catalog=self._catalog, origin=inbound)
            await self._notified(inbound.session, upstream, message, route, False)
        return relay

    async def _ensure_tools(self, inbound: Inbound, upstream: str) -> dict[str, ToolInfo]:
        """An upstream's usable tools, listed (on this caller's behalf, once for concurrent callers) when
        a call arrives without a prior list."""
        async def fetch() -> list[dict[str, Any]]:
            cursor: str | None = None
            tools: list[dict[str, Any]] = []
            for _ in range(MAX_TOOL_PAGES):
                result = await self.fetch(inbound, upstream, "tools/list", {"cursor": cursor} if cursor else {})
                tools.extend(t for t in result.get("tools") or [] if isinstance(t, dict))
                cursor = result.get("nextCursor")
                if not cursor:
                    return (await self._guard.check(upstream, tools)).usable
            # As the pin watch and the resource owners do: a list cut short would make the tools past it
            # unknown_tool, and a cursor that never ends would cost its hundred requests at every load.
            raise GatewayError("upstream_error", f"tools/list of {upstream} has more than {MAX_TOOL_PAGES} pages",
                               data={"upstream": upstream})
        return await self._catalog.load(upstream, fetch)

    async def _load_tool(self, inbound: Inbound, upstream: str, name: str) -> ToolInfo | None:
        return (await self._ensure_tools(inbound, upstream)).get(name)

    def _context(self, inbound: Inbound, action: str, upstream: str, tool: ToolInfo,
                 params: dict[str, Any]) -> CallContext:
        sent = inbound.message.params
        meta = sent.get("_meta")
        ctx = CallContext(
            method=inbound.message.method, request_id=inbound.message.id, params=params,
            principal=inbound.principal, upstream=upstream, tool=tool, session_id=inbound.session.id,
            protocol_version=inbound.session.protocol_version, action=action,
            progress_token=meta.get("progressToken") if isinstance(meta, dict) else None,
            notify=inbound.send, cancelled=inbound.cancelled, trace_id=inbound.trace_id,
        )
        ctx.extra["session"] = inbound.session
        ctx.extra["requested_name"] = sent.get("name") or sent.get("uri")
        ctx.extra["relay"] = self._relay(inbound, upstream)
        ctx.extra.update(inbound.extra)
        return ctx

    async def _not_found(self, inbound: Inbound, action: str, name: str,
                         target: tuple[str, str] | None = None) -> GatewayError:
        """The answer for an item that does not exist (a denial's answer), once its decision record is written.

        `target`: (upstream, its own name) when the name led to an upstream. Only this error path pays for the
        record; the record stage marks it deny + not_found, so probing for names shows in the decision log."""
        upstream, own = target if target is not None else (None, name)
        ctx = CallContext(method=inbound.message.method, request_id=inbound.message.id, params=inbound.params,
                          principal=inbound.principal, upstream=upstream, session_id=inbound.session.id,
                          protocol_version=inbound.session.protocol_version, action=action, trace_id=inbound.trace_id)
        ctx.extra[NOT_FOUND_ITEM] = own
        ctx.task_id = named_task(inbound.params, inbound.principal, inbound.session.id)  # the stages never ran
        return await self._pipeline.refuse_missing(ctx, ToolInfo(upstream or "", own), not_found(action, name))

    # -- handlers ----------------------------------------------------------------------------------

    async def _ping(self, inbound: Inbound) -> dict[str, Any]:
        return {}

    async def _call_tool(self, inbound: Inbound) -> dict[str, Any]:
        sent = inbound.message.params
        name = sent.get("name")
        if not isinstance(name, str) or not name:
            raise GatewayError("invalid_params", "Invalid params: tools/call needs a tool name")
        if "arguments" in sent and not isinstance(sent["arguments"], dict):
            if sent["arguments"] is not None:
                raise GatewayError("invalid_params", "Invalid params: arguments must be an object")
            del sent["arguments"]  # null = no arguments, as the SDK's servers read it
        target = self._target(inbound, name)
        if target is None:
            raise await self._not_found(inbound, "call_tool", name)
        upstream, tool_name = target
        params = upstream_params(sent, name=tool_name)
        # A call held for approval is released after minutes: its tool may be quarantined by then (authz/stage.py).
        current = functools.partial(self._load_tool, inbound, upstream, tool_name)
        if self._catalog.loaded(upstream):
            tool = self._catalog.tool(upstream, tool_name)
            if tool is None:
                raise await self._not_found(inbound, "call_tool", name, target)
            ctx = self._context(inbound, "call_tool", upstream, tool, params)
            ctx.extra[CURRENT_TOOL] = current
            return await self._pipeline.run(ctx)
        # Tools not known yet: authorize decides on what the tool could be before its list is fetched.
        variants = self._catalog.variants(upstream, tool_name)
        ctx = self._context(inbound, "call_tool", upstream, variants[0], params)
        ctx.extra[PENDING_TOOL] = PendingTool(variants, current)
        ctx.extra[CURRENT_TOOL] = current
        return await self._pipeline.run(ctx)

    async def _read_resource(self, inbound: Inbound) -> dict[str, Any]:
        uri = inbound.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise GatewayError("invalid_params", "Invalid params: resources/read needs a uri")
        try:
            upstream, own_uri = await self._resource(inbound, uri)
        except GatewayError as exc:
            if exc.reason == "unknown_resource":  # no upstream has it; not an upstream's or the store's failure
                await self._not_found(inbound, "read_resource", uri)
            raise
        ctx = self._context(inbound, "read_resource", upstream, self._catalog.resource(upstream, own_uri),
                            upstream_params(inbound.params, uri=own_uri))
        result = await self._pipeline.run(ctx)
        if inbound.session.view is None:
            return _expose_contents(upstream, result)
        return result

    async def _get_prompt(self, inbound: Inbound) -> dict[str, Any]:
        name = inbound.params.get("name")
        if not isinstance(name, str) or not name:
            raise GatewayError("invalid_params", "Invalid params: prompts/get needs a prompt name")
        target = self._target(inbound, name)
        if target is None:
            raise await self._not_found(inbound, "get_prompt", name)
        upstream, prompt = target
        params = upstream_params(inbound.params, name=prompt)
        listed = self._catalog.prompts.get(upstream, prompt)
        info = listed or self._catalog.named(upstream, prompt)
        ctx = self._context(inbound, "get_prompt", upstream, info, params)
        if listed is None:  # not in its last known list: decided first, then the list is read (a tools/call's path)
            async def fetch(upstream: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
                return await self.fetch(inbound, upstream, method, params)
            find = functools.partial(self._catalog.prompts.find, upstream, prompt, fetch)
            ctx.extra[PENDING_TOOL] = PendingTool((info,), find)
        try:
            return await self._pipeline.run(ctx)
        except UpstreamErrorResponse:
            self._catalog.prompts.forget(upstream)  # it may have removed the prompt: its list is read again
            raise

    async def _list(self, inbound: Inbound) -> dict[str, Any]:
        kind = LISTS[inbound.message.method]

        async def fetch(upstream: str, params: dict[str, Any]) -> dict[str, Any]:
            return await self.fetch(inbound, upstream, kind.method, params)

        view = inbound.session.view
        if view is not None:
            return await self._lister.one(kind, inbound.principal, view, inbound.params, fetch)
        return await self._lister.merged(kind, inbound.principal, self._catalog.upstream_names,
                                         inbound.params, fetch)

    # -- requests about one item, decided like its list entry ----------------------------------------

    def _require_visible(self, inbound: Inbound, action: str, item: ToolInfo, requested: str) -> None:
        """Refuse, exactly as for a missing item, unless a list would show this item to the principal."""
        decision = self._authorizer.visible(inbound.principal, action, item)
        if decision.outcome == "deny":
            raise not_found(action, requested)

    async def _by_resource(self, inbound: Inbound) -> dict[str, Any]:
        uri = inbound.params.get("uri")
        if not isinstance(uri, str):
            raise GatewayError("invalid_params", "Invalid params: uri required")
        upstream, own_uri = await self._resource(inbound, uri)
        self._require_visible(inbound, "read_resource", self._catalog.resource(upstream, own_uri), uri)
        return await self.fetch(inbound, upstream, inbound.message.method, {**inbound.params, "uri": own_uri})

    async def _complete(self, inbound: Inbound) -> dict[str, Any]:
        ref = inbound.params.get("ref")
        if not isinstance(ref, dict):
            raise GatewayError("invalid_params", "Invalid params: ref required")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            name = ref["name"]
            target = self._target(inbound, name)
            if target is None:
                raise not_found("get_prompt", name)
            self._require_visible(inbound, "get_prompt", self._catalog.named(*target), name)
            params = {**inbound.params, "ref": {**ref, "name": target[1]}}
            return await self._completion(inbound, target[0], params)
        if ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            uri = ref["uri"]  # a URI or a URI template, decided by that string as its list entry is
            upstream, own_uri = await self._resource(inbound, uri)
            self._require_visible(inbound, "read_resource", self._catalog.resource(upstream, own_uri), uri)
            params = {**inbound.params, "ref": {**ref, "uri": own_uri}}
            return await self._completion(inbound, upstream, params)
        raise GatewayError("invalid_params", "Invalid params: ref must be a ref/prompt with a name "
                                             "or a ref/resource with a uri")

    async def _completion(self, inbound: Inbound, upstream: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.fetch(inbound, upstream, "completion/complete", params)
        except UpstreamErrorResponse as exc:
            # /mcp offers completions whatever its upstreams do: one without them has no values to offer.
            # /mcp/{upstream} passes its own capabilities and its own answer through.
            if inbound.session.view is None and exc.error.get("code") == -32601:
                return {"completion": {"values": [], "hasMore": False}}
            raise

    async def _uses_a_tool(self, inbound: Inbound, upstream: str) -> bool:
        """Whether the principal may call any of the upstream's tools (learning its list if needed)."""
        tools = await self._ensure_tools(inbound, upstream)
        return any(self._authorizer.visible(inbound.principal, "call_tool", tool).outcome != "deny"
                   for tool in tools.values())

    async def _set_level(self, inbound: Inbound) -> dict[str, Any]:
        """A session-wide setting: sent only to upstreams where the principal may use a tool; elsewhere
        accepted here, as it changes nothing the principal could see."""
        if inbound.params.get("level") not in LOG_LEVELS:  # else the aggregated view would swallow the refusals
            raise GatewayError("invalid_params", "Invalid params: level must be one of " + ", ".join(LOG_LEVELS))
        view = inbound.session.view
        result: dict[str, Any] = {}
        if view is not None:
            if await self._uses_a_tool(inbound, view):
                result = await self.fetch(inbound, view, inbound.message.method, inbound.params)
        else:
            async def one(upstream: str) -> None:
                try:
                    if await self._uses_a_tool(inbound, upstream):
                        await self.fetch(inbound, upstream, inbound.message.method, inbound.params)
                except (GatewayError, UpstreamErrorResponse):
                    pass  # an upstream without logging support must not fail the others
            await asyncio.gather(*(one(u) for u in self._catalog.upstream_names))
        # Accepted: the session's log lines honour it from now on (server_messages.py), also from an upstream without
        # logging/setLevel or one opened later; on the pass-through view only once the upstream itself accepted it.
        inbound.session.log_level = LOG_LEVELS.index(inbound.params["level"])
        return result

    # -- name resolution ---------------------------------------------------------------------------

    def _target(self, inbound: Inbound, name: str) -> tuple[str, str] | None:
        view = inbound.session.view
        if view is not None:
            return view, name
        return self._catalog.resolve(name)

    async def _resource(self, inbound: Inbound, uri: str) -> tuple[str, str]:
        """(upstream, its own URI) of a URI or URI template as the client named it. The aggregated form
        carries its owner; a URI not starting with `customs://<configured upstream>/` may be an upstream's own,
        sent to the one upstream listing it. unknown_resource when no single upstream owns it."""
        view = inbound.session.view
        if view is not None:
            return view, uri
        target = self._catalog.resolve_uri(uri)
        if target is not None:
            return target
        if not self._catalog.names_upstream(uri):
            async def fetch(upstream: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
                return await self.fetch(inbound, upstream, method, params)
            owner = await self._catalog.resource_owners.owner(uri, fetch, inbound.principal.key)
            if owner is not None:
                return owner, uri
        raise not_found("read_resource", uri)


def _expose_contents(upstream: str, result: dict[str, Any]) -> dict[str, Any]:
    """A read result with its contents' URIs in the aggregated form, so the client can use them again."""
    contents = result.get("contents")
    if not isinstance(contents, list):
        return result
    exposed = [{**c, "uri": exposed_uri(upstream, c["uri"])} if isinstance(c, dict) and isinstance(c.get("uri"), str)
               else c for c in contents]
    return {**result, "contents": exposed}
