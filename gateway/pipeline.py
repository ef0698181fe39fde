"""The order of a call, written once: identify → authorize → approve → credential → forward → record.

`identify` runs at the HTTP edge (every request needs a principal, and sessions are bound to it);
the dispatcher builds a `CallContext` with that principal and hands it to `Pipeline.run`, which
runs the remaining stages in order. A stage rejects by raising `GatewayError`; `record` always runs.
The stage seams are Protocols so in-memory and Redis stores, or real and fake upstreams, swap freely.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from gateway.context import CallContext, Decision, Principal, ToolInfo
from gateway.errors import GatewayError


class Identifier(Protocol):
    """identify: HTTP request facts → Principal, or raise GatewayError("unauthenticated").

    `resource_path` is the MCP endpoint asked (`/mcp` or `/mcp/{upstream}`), whose RFC 9728 resource a
    token may name and whose metadata a 401 points to."""

    async def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None,
                       resource_path: str = "/mcp") -> Principal: ...


class Authorizer(Protocol):
    """authorize: decide one request. Never raises for policy reasons; errors become deny."""

    def decide(self, principal: Principal, action: str, tool: ToolInfo, ctx: CallContext | None) -> Decision: ...

    def visible(self, principal: Principal, action: str, tool: ToolInfo) -> Decision: ...


class Stage(Protocol):
    """One step of the call. Mutates the context or raises a GatewayError."""

    async def __call__(self, ctx: CallContext) -> None: ...


class Forwarder(Protocol):
    async def __call__(self, ctx: CallContext) -> dict[str, Any]: ...


class Recorder(Protocol):
    async def __call__(self, ctx: CallContext) -> None: ...


class StageTimer(Protocol):
    """Told when authorize or credential ends (`started_ns` from `time.perf_counter_ns`, the error if it
    raised): the stage-duration metric and the stage's span are made from this, with no wrapper around the stage."""

    def __call__(self, stage: str, ctx: CallContext, started_ns: int, error: BaseException | None) -> None: ...


# CallContext.extra key: set by the approve stage once it claimed an approved call for this request, to a function
# the pipeline awaits when the call is over, so the approval records whether the call reached the upstream.
APPROVAL_SETTLE: Final = "approval_settle"


async def _no_op(ctx: CallContext) -> None:
    return None


def _untimed(stage: str, ctx: CallContext, started_ns: int, error: BaseException | None) -> None:
    return None


@asynccontextmanager
async def _no_slot(ctx: CallContext) -> AsyncIterator[None]:
    yield


class TaskFacts(Protocol):
    """Stateful context: reserves what this task has done before the decision, gives it back if the
    call is never forwarded."""

    async def __call__(self, ctx: CallContext) -> None: ...

    async def release(self, ctx: CallContext) -> None: ...


class _NoFacts:
    async def __call__(self, ctx: CallContext) -> None:
        return None

    async def release(self, ctx: CallContext) -> None:
        return None


@dataclass(frozen=True)
class Pipeline:
    """The stages after identify, in the one order they run."""

    authorize: Stage
    approve: Stage
    credential: Stage
    forward: Forwarder
    record: Recorder
    rate: Callable[[CallContext], Awaitable[None]] = _no_op  # rate limits, before any decision
    facts: TaskFacts = field(default_factory=_NoFacts)  # the task and what it has done so far, for the decision
    slot: Callable[[CallContext], AbstractAsyncContextManager[None]] = _no_slot  # concurrency while executing
    timed: StageTimer = _untimed

    async def refuse_missing(self, ctx: CallContext, item: ToolInfo, error: GatewayError) -> GatewayError:
        """The answer for an item that does not exist, `error` (a denial's answer), once the stages a denied request
        meets before its decision have run and the record is written: otherwise an agent would tell a missing name
        from a denied one by what those stages answer (rate_limited past its budget; policy_unavailable while the
        task store is down, for a tools/call). The reservation a tools/call's task facts make is given back."""
        try:
            await self.rate(ctx)
            if ctx.action == "call_tool":
                ctx.tool = item
                try:
                    await self.facts(ctx)
                finally:
                    ctx.tool = None
                await self.facts.release(ctx)
        except GatewayError as refused:
            error = refused
        ctx.error = error
        await self.record(ctx)
        return error

    async def run(self, ctx: CallContext) -> dict[str, Any]:
        """Run one request to its result (a JSON-RPC `result` object) or raise."""
        # authorize and credential are timed here, not by wrappers: a wrapper per stage is a coroutine
        # per stage per call. `timing` names the timed stage running now, reported with its error.
        timing: str | None = None
        started = 0
        try:
            await self.rate(ctx)
            await self.facts(ctx)
            timing, started = "authorize", time.perf_counter_ns()
            await self.authorize(ctx)
            timing = None
            self.timed("authorize", ctx, started, None)
            await self.approve(ctx)
            if ctx.approval is not None:
                # Released after a wait: decide again under the policies in force now (a deny raises).
                initial = ctx.decision
                timing, started = "authorize", time.perf_counter_ns()
                await self.authorize(ctx)
                timing = None
                self.timed("authorize", ctx, started, None)
                ctx.extra["recheck"], ctx.decision = ctx.decision, initial
            async with self.slot(ctx):
                timing, started = "credential", time.perf_counter_ns()
                await self.credential(ctx)
                timing = None
                self.timed("credential", ctx, started, None)
                ctx.result = await self.forward(ctx)
            return ctx.result
        except BaseException as exc:
            if timing is not None:
                self.timed(timing, ctx, started, exc)
            ctx.error = exc
            await self.facts.release(ctx)
            raise
        finally:
            try:
                if ctx.approval is not None:  # a claimed approval: executed, or never ran (and why)
                    settle = ctx.extra.pop(APPROVAL_SETTLE, None)
                    if settle is not None:
                        await settle(ctx)
            finally:  # a cancellation landing in the settle must not cost the call its record
                await self.record(ctx)
