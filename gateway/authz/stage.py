"""The authorize stage: decide the call with the policy engine; a denied item looks exactly like a missing one."""

from __future__ import annotations

import time
from typing import Any

from gateway.authz.entities import RELEASED_AT
from gateway.authz.record import SnapshotParts, snapshot_facts
from gateway.catalog import CURRENT_TOOL, PENDING_TOOL, PendingTool, not_found
from gateway.context import NOT_FOUND_ITEM, CallContext, Decision
from gateway.param_headers import PARAM_HEADERS, check_param_headers
from gateway.pipeline import Authorizer


class AuthorizeStage:
    """Sets ctx.decision. deny → the not-found answer of the item's kind (`unknown_tool`, `unknown_prompt`,
    `unknown_resource`) with the same message a missing one gets (no policy ids on the wire);
    approval_required passes through to the approve stage; no loaded policy set → "policy_unavailable"
    (raised by the engine)."""

    def __init__(self, engine: Authorizer, environment: str | None = None) -> None:
        self._engine = engine
        self._environment = environment  # set: decision records carry a replayable snapshot
        self._parts = SnapshotParts()

    async def __call__(self, ctx: CallContext) -> None:
        # The name the client asked for (prefixed in the aggregated view), so a denial reads exactly
        # like the router's answer for an item that does not exist.
        name = str(ctx.extra.get("requested_name") or ctx.params.get("name") or ctx.params.get("uri") or "")
        if ctx.tool is None:
            ctx.extra[NOT_FOUND_ITEM] = name
            raise not_found(ctx.action, name)
        # Kept while the tool is unchecked (a denial decided on what it could be): its name, perhaps made up,
        # is then no metric value (telemetry/stage.py).
        pending = ctx.extra.get(PENDING_TOOL)
        if ctx.approval is not None:  # the re-check of a released call: decided (and recorded) as it runs now
            ctx.extra[RELEASED_AT] = time.time()
            current = ctx.extra.get(CURRENT_TOOL)
            if current is not None:  # a tool quarantined (or gone) while its call was held is not called
                tool = await current()
                if tool is None:
                    ctx.extra[NOT_FOUND_ITEM] = ctx.tool.name
                    raise not_found(ctx.action, name)
                ctx.tool = tool
        # Cedar on pre-parsed handles takes tens of microseconds: inline, no thread hop.
        decision = self._engine.decide(ctx.principal, ctx.action, ctx.tool, ctx)
        # Learning the tool's annotations means a tools/list upstream on the caller's behalf (and a credential
        # minted for it): not for a call that no annotation could make anything but a deny.
        if isinstance(pending, PendingTool) and not self._denied_whatever_annotations(ctx, decision, pending):
            tool = await pending.load()
            del ctx.extra[PENDING_TOOL]
            if tool is None:  # its upstream has no such tool: recorded as not found, not as a policy's denial
                ctx.extra[NOT_FOUND_ITEM] = ctx.tool.name
                raise not_found(ctx.action, name)
            ctx.tool = tool
            decision = self._engine.decide(ctx.principal, ctx.action, tool, ctx)
        ctx.decision = decision
        count_shadow = getattr(self._engine, "count_shadow", None)  # the engine's /readyz count, as recorded
        if count_shadow is not None:
            count_shadow(ctx)
        if self._environment is not None:
            # Built only when the decision is logged: the snapshot costs more than the decision. A bound
            # method, not a closure over ctx: ctx holding a function that holds ctx is a reference cycle,
            # and cycles per call leave every call's objects to the garbage collector.
            ctx.extra["authz_input"] = self._snapshot
        if ctx.decision.outcome == "deny":
            raise not_found(ctx.action, name)
        headers = ctx.extra.get(PARAM_HEADERS)
        if headers is not None:  # a stateless tools/call: its Mcp-Param-* headers must agree with its arguments
            check_param_headers(ctx.tool, ctx.params, headers)

    def _denied_whatever_annotations(self, ctx: CallContext, first: Decision, pending: PendingTool) -> bool:
        """`first` (the decision on the spec defaults) and the decision on every other labelling the tool
        could have are deny."""
        if first.outcome != "deny":
            return False
        return all(self._engine.decide(ctx.principal, ctx.action, variant, ctx).outcome == "deny"
                   for variant in pending.variants[1:])

    def _snapshot(self, ctx: CallContext) -> tuple[Any, ...]:
        assert ctx.tool is not None and self._environment is not None
        return snapshot_facts(ctx.principal, ctx.action, ctx.tool, ctx, self._environment, parts=self._parts)
