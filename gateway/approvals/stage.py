"""The approve stage: holds a call the policy marked `approval_required` until a person decides.

A client that can take a stream waits on the open request (keep-alives / progress notifications);
one that cannot gets `approval_pending` with the approval id and retries the identical call, which
joins the same item and, once approved, executes exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.approvals.model import TERMINAL, Approval, ApprovalNotFound, binding_key, new_id
from gateway.approvals.store import ApprovalStore, run_to_end
from gateway.config.model import ApprovalsConfig
from gateway.context import ApprovalState, CallContext, Principal
from gateway.errors import GatewayError
from gateway.pipeline import APPROVAL_SETTLE
from gateway.transport.common import never_sent

log = logging.getLogger("customs.approvals")
REDACTED = "[redacted]"
OUTAGE_RETRY_S = 1.0  # while the store is unreachable, a held call tries it again this often


T = TypeVar("T")


async def _undone_if_cancelled(step: Awaitable[T], undo: Callable[[T], Awaitable[Any] | None]) -> T:
    """`step` run to its end (store.run_to_end); if the caller was cancelled meanwhile and the step succeeded,
    what `undo(result)` returns is run to its end too (failures ignored) before the cancellation goes on."""
    task = asyncio.ensure_future(step)
    try:
        return await run_to_end(task)
    except asyncio.CancelledError:
        if not task.cancelled() and task.exception() is None:
            compensation = undo(task.result())
            if compensation is not None:
                with contextlib.suppress(Exception):
                    await run_to_end(compensation)
        raise


class _GoneAway(Exception):
    """The held request's client went away (notifications/cancelled, or its stream broke)."""


class Notifier(Protocol):
    def notify(self, approval: Approval) -> None: ...


def key_redactor(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    """Replace values under any of `keys` (case-insensitive, any depth) with a marker."""
    lowered = {k.lower() for k in keys}

    def redact(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: REDACTED if str(k).lower() in lowered else redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(v) for v in value]
        return value

    return redact


def owners_of(principal: Principal) -> tuple[str, ...]:
    """The `owner` attributes (a string or a list of strings) of the requester and of its chain's actors,
    where known: the people on whose behalf the call is made."""
    found: list[str] = []
    for attributes in (principal.attributes, *(actor.attributes for actor in principal.chain)):
        value = attributes.get("owner")
        for owner in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(owner, str) and owner and owner not in found:
                found.append(owner)
    return tuple(found)


def _terminal_error(item: Approval) -> GatewayError:
    data: dict[str, Any] = {"approval_id": item.id}
    if item.state == "denied":
        data.update(comment=item.comment, decided_by=", ".join(item.decided_by) or None)
        return GatewayError("approval_denied", data=data)
    if item.state == "expired":
        return GatewayError("approval_expired", data=data)
    return GatewayError("approval_cancelled", f"Pending call was {item.state}", data=data)


_NOT_FOUND = frozenset({"unknown_tool", "unknown_prompt", "unknown_resource"})
# Why a claimed call that was never sent upstream hands its approval back for the agent's retry (settle).
_RETRY_FIXES = frozenset({"rate_limited", "upstream_unavailable"})
_UNRELEASED = {"approval_pending": "pending", "approval_denied": "denied", "approval_expired": "expired",
               "approval_cancelled": "cancelled"}


def _unreleased(item: Approval, reason: str, waited_s: float) -> ApprovalState:
    """What a held call that was not released learned: a withdrawn item may also have been abandoned."""
    outcome = _UNRELEASED[reason]
    if outcome == "cancelled" and item.state in TERMINAL:
        outcome = item.state
    return ApprovalState(item.id, outcome, item.decided_by, item.comment, waited_s)


def _held_span(item: Approval) -> tuple[str, str] | None:
    trace_id, span_id = item.trace_id, item.span_id
    return (trace_id, span_id) if trace_id and span_id else None


class ApproveStage:
    """Stage 3 of the pipeline. No-op unless ctx.decision.outcome == "approval_required"."""

    def __init__(self, store: ApprovalStore, config: ApprovalsConfig,
                 redactor: Callable[[Any], Any] | None = None, *, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time, page_url: str | None = None,
                 policy_quorum: Callable[[str], int | None] | None = None,
                 current_ids: Callable[[], tuple[str | None, str | None]] | None = None) -> None:
        self._store = store
        self._current_ids = current_ids  # (trace id, span id) of the current span: stored on the item
        self._policy_quorum = policy_quorum
        self._config = config
        by_key = key_redactor(config.redact_keys)
        self._redact: Callable[[Any], Any] = (lambda v: by_key(redactor(v))) if redactor else by_key
        self._notifier = notifier
        self._clock = clock
        self._page_url = page_url
        self._released = asyncio.Event()  # set on shutdown: held calls answer approval_pending at once
        self._releasing: set[asyncio.Future[Any]] = set()  # holds a shutdown left to release in the background

    def release_held(self) -> None:
        """Shutdown: every held call answers `approval_pending` now and its item stays pending in the store, so
        the agent can retry the identical call on another replica (or after the restart) and join it. The
        requests this process still cancels after that are ended by the shutdown, not by their clients, so
        they no longer withdraw their items either."""
        self._released.set()

    @property
    def shutting_down(self) -> asyncio.Event:
        """Set by `release_held()`: the gateway has begun to shut down."""
        return self._released

    def in_background(self) -> set[asyncio.Future[Any]]:
        """The holds' releases still running after their calls answered: shutdown awaits them (gateway/app.py)."""
        return set(self._releasing)

    def quorum(self, policy_ids: Sequence[str]) -> int:
        """Distinct approvers this call needs: the largest quorum of the policies that held it, each policy
        counting with its `@quorum("N")`, or `approvals.quorum` when it has none."""
        default = self._config.quorum
        if self._policy_quorum is None:
            return default
        return max((self._policy_quorum(pid) or default for pid in policy_ids), default=default)

    def draft(self, ctx: CallContext) -> Approval:
        """A new pending item for this call (not yet stored)."""
        assert ctx.tool is not None and ctx.decision is not None
        principal = ctx.principal
        upstream = ctx.upstream or ctx.tool.upstream
        now = self._clock()
        trace_id, span_id = self._current_ids() if self._current_ids is not None else (None, None)
        trace = {k: v for k, v in (("trace_id", trace_id or ctx.trace_id), ("span_id", span_id)) if v}
        return Approval(
            id=new_id(), state="pending", upstream=upstream, tool=ctx.tool.name, principal=principal.id,
            principal_key=principal.key, chain=tuple(principal.chain_ids), tenant=principal.tenant,
            args=self._redact(ctx.args), args_digest=ctx.digest, policies=tuple(ctx.decision.policy_ids),
            created_at=now, expires_at=now + self._config.ttl_s,
            key=binding_key(principal.key, upstream, ctx.tool.name, ctx.digest, tuple(principal.chain_ids),
                            ctx.method, principal.tenant),
            subject=principal.subject,
            owners=owners_of(principal), policy_version=ctx.decision.policy_version,
            quorum=self.quorum(ctx.decision.policy_ids), method=ctx.method, extra=trace)

    async def __call__(self, ctx: CallContext) -> None:
        if ctx.decision is None or ctx.decision.outcome != "approval_required" or ctx.tool is None:
            return
        started = self._clock()
        item: Approval | None = None
        try:
            for _ in range(3):  # a lost claim race means the approval was used: the call needs a new one
                item, created = await self._create_or_join(ctx)
                ctx.extra["approval_id"] = item.id
                if created and self._notifier is not None:
                    self._notifier.notify(item)
                outcome = "reused" if item.claimable else "approved"  # approved before this request came back
                if item.pending:
                    item = await self._hold(ctx, item)
                    if item.state == "expired":  # told now, on the open request: a retry asks anew
                        with contextlib.suppress(Exception):
                            await self._store.forget(item.id)
                if item.claimable:
                    if await self._claim(item):
                        ctx.approval = ApprovalState(item.id, outcome, item.decided_by, item.comment,
                                                     self._clock() - started, _held_span(item))
                        ctx.extra[APPROVAL_SETTLE] = self.settle  # a bound method: no cycle through ctx
                        return
                    continue
                raise _terminal_error(item)
            raise GatewayError("approval_pending", "Approval was used by another identical call",
                               data={"approval_id": ctx.extra.get("approval_id")})
        except (GatewayError, asyncio.CancelledError) as exc:
            # The decision log and the spans say which approval stopped the call, and how; a client
            # that went away while held withdrew its call.
            reason = exc.reason if isinstance(exc, GatewayError) else "approval_cancelled"
            if item is not None and reason in _UNRELEASED:
                ctx.approval = _unreleased(item, reason, self._clock() - started)
            raise

    async def _create_or_join(self, ctx: CallContext) -> tuple[Approval, bool]:
        """The call's item: Redis may have created it when a cancellation cut the reply off. Such an item is
        withdrawn (also on shutdown: the agent never learnt its id, and its retry asks anew), since nobody waits
        on it and no approver was notified: a retry joining it would notify nobody."""
        def withdraw_created(result: tuple[Approval, bool]) -> Awaitable[Any] | None:
            item, created = result
            return self._store.withdraw(item.id, actor=ctx.principal.id) if created else None
        return await _undone_if_cancelled(
            self._store.create_or_join(self.draft(ctx), link_s=2 * self._config.ttl_s), withdraw_created)

    async def _claim(self, item: Approval) -> bool:
        """Claim the approved call: a claim whose reply a cancellation cut off is settled as `not_executed:
        cancelled` (the call never reached the forward), not left reading `executed`."""
        return await _undone_if_cancelled(self._store.claim_execution(item.id),
                                          lambda claimed: self._store.settle(item.id, "cancelled") if claimed else None)

    async def settle(self, ctx: CallContext) -> None:
        """The claimed call is over: record `executed` if it was forwarded (from then on it may have run, unless the
        upstream was never reached: circuit open, no connection made), else `not_executed` with why (the approval
        stays used: a retry asks anew), except for a call refused in a way the agent's retry fixes (its token
        expired while it was held, a busy concurrency slot, an unreachable upstream): its approval is handed back
        for that retry (store.hand_back). Never fails the call's answer."""
        assert ctx.approval is not None
        error = ctx.error
        if ctx.extra.get("forwarded") and not never_sent(error):
            why = None
        elif isinstance(error, GatewayError):
            # Before the forward, a not-found answer is the re-check's denial (denied looks like missing).
            why = "denied_on_recheck" if error.reason in _NOT_FOUND else error.reason
        else:
            why = "cancelled" if isinstance(error, asyncio.CancelledError) else "not_forwarded"
        # Refusals the agent's retry fixes, with nothing sent upstream: an agent token that expired while the call
        # was held, a concurrency slot busy at the release, an upstream that could not be reached (down, restarting,
        # its circuit open): the approver's decision must not be spent on a wait.
        token_expired = (why == "credential_unavailable" and isinstance(error, GatewayError)
                         and error.data.get("agent_token_expired") is True)
        back = "agent_token_expired" if token_expired else why if why in _RETRY_FIXES else None
        try:
            # To its end: this runs in the pipeline's `finally`, where a second cancellation (the session's end
            # after the client's) would otherwise cut the record off with the store's reply.
            if back is not None:
                await run_to_end(self._store.hand_back(ctx.approval.id, back))
            else:
                await run_to_end(self._store.settle(ctx.approval.id, why))
        except Exception:  # the answer stands; the item keeps saying `executed` (it may have)
            log.warning("could not record whether approved call %s ran", ctx.approval.id, exc_info=True)

    def _pending_error(self, item: Approval) -> GatewayError:
        data: dict[str, Any] = {"approval_id": item.id, "expires_at": item.expires_at}
        if self._page_url:
            data["approval_url"] = f"{self._page_url}#{item.id}"
        if self._released.is_set():
            return GatewayError("approval_pending", "Call is waiting for approval; this gateway is shutting down, "
                                "retry the identical call", data=data)
        return GatewayError("approval_pending", data=data)

    async def _hold(self, ctx: CallContext, item: Approval) -> Approval:
        """Wait for a decision on the open request, or answer approval_pending at once."""
        # The stateless 2026-07-28 revision is a client that cannot wait, SSE or not (issue 4): it is told the
        # approval id at once and retries the identical call, which joins the item (docs/approvals.md).
        stateless = bool(getattr(ctx.extra.get("session"), "stateless", False))
        if ctx.notify is None or stateless or self._config.wait_s <= 0 or self._released.is_set():
            raise self._pending_error(item)
        cancelled: asyncio.Event = ctx.cancelled if isinstance(ctx.cancelled, asyncio.Event) else asyncio.Event()
        # A request that goes away withdraws the call once it no longer holds the item: an identical call held
        # on it at the same time (the agent on another connection or replica) keeps waiting (store.withdraw).
        try:
            return await self._held(ctx, item, cancelled)
        except _GoneAway as exc:
            # An item the store lost has nothing left to withdraw; one Redis is down for is withdrawn once it is back.
            with contextlib.suppress(ApprovalNotFound, GatewayError):
                await run_to_end(self._store.withdraw(item.id, actor=ctx.principal.id))
            raise GatewayError("approval_cancelled", data={"approval_id": item.id}) from exc.__cause__
        except ApprovalNotFound as exc:
            # The store lost the item while the call was held (Redis restarted without persistence): there is
            # nothing left to approve, and the call never ran. Retrying asks anew.
            log.warning("approval %s vanished from the store while its call was held", item.id)
            raise GatewayError("approval_unavailable", "Pending approval was lost by the approval store; "
                               "call not executed", data={"approval_id": item.id, "detail": "approval_lost"}) from exc
        except asyncio.CancelledError:
            # the client went away (handler cancelled): withdraw the call, then let cancellation proceed;
            # a shutdown's cancellation leaves the item pending for the agent's retry
            if not self._released.is_set():
                with contextlib.suppress(Exception):
                    await run_to_end(self._store.withdraw(item.id, actor=ctx.principal.id))
            raise

    async def _held(self, ctx: CallContext, item: Approval, cancelled: asyncio.Event) -> Approval:
        """The wait, inside the store's hold of the item. A shutdown's `approval_pending` is answered without waiting
        for the hold's release: against a Redis that hangs, each command waits out the client's socket timeout, and
        the agent used to hear nothing until the drain deadline withdrew its call (`shutting_down`, no approval id).
        The release goes on in the background; one that never reaches Redis leaves the hold as a killed replica's
        does, and the agent's retry elsewhere joins the item all the same."""
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._store.hold(item.id))
        async with stack:
            try:
                return await self._wait_loop(ctx, item, cancelled)
            except GatewayError as exc:
                if exc.reason != "approval_pending" or not self._released.is_set():
                    raise
                released = stack.pop_all()
                task = asyncio.ensure_future(released.aclose())
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
                raise

    async def _wait_loop(self, ctx: CallContext, item: Approval, cancelled: asyncio.Event) -> Approval:
        loop = asyncio.get_running_loop()
        window_ends = loop.time() + self._config.wait_s
        cancel_wait = loop.create_task(cancelled.wait())
        release_wait = loop.create_task(self._released.wait())
        ticks = 0
        try:
            await self._keepalive(ctx, item, ticks)  # commit the stream at once: short client timeouts
            while True:
                until_expiry = item.expires_at - self._clock()
                if until_expiry <= 0:
                    return await self._store.cancel(item.id, "expired")
                left = min(window_ends - loop.time(), until_expiry)
                if left <= 0:
                    raise self._pending_error(item)
                step = min(self._config.keepalive_s, left)
                item = await self._wait_step(item, step, {cancel_wait, release_wait})
                if release_wait.done() and item.state not in TERMINAL:
                    raise self._pending_error(item)  # shutdown: the item stays pending for a retry
                if cancel_wait.done():
                    raise _GoneAway
                if item.state in TERMINAL:
                    return item
                ticks += 1
                await self._keepalive(ctx, item, ticks)
        finally:
            cancel_wait.cancel()
            release_wait.cancel()

    async def _wait_step(self, item: Approval, step: float, interrupts: set[asyncio.Task[Any]]) -> Approval:
        """One wait of at most `step` seconds, ended early by a change or any of `interrupts`. A Redis outage keeps
        the call held for the whole step, the store tried again every OUTAGE_RETRY_S: a store failing at once
        used to end each step at once, so a held call sent keep-alives and reconnected several times a second."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + step
        while True:
            left = max(0.0, ends - loop.time())
            change = asyncio.ensure_future(self._store.wait(item.id, left))
            try:
                await asyncio.wait({change, *interrupts}, timeout=left + 1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not change.done():
                    change.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await change
            if change.cancelled() or not change.done():
                return item
            error = change.exception()
            if not (isinstance(error, GatewayError) and error.reason == "approval_unavailable"):
                return change.result()
            log.debug("approval store unavailable while holding %s; still waiting", item.id)
            pause = min(OUTAGE_RETRY_S, ends - loop.time())
            if pause <= 0 or any(interrupt.done() for interrupt in interrupts):
                return item
            await asyncio.wait(interrupts, timeout=pause)

    async def _keepalive(self, ctx: CallContext, item: Approval, ticks: int) -> None:
        """Keep the held request's stream alive: progress if the client asked for it, else an SSE comment."""
        left = max(0, int(item.expires_at - self._clock()))
        text = f"Waiting for approval {item.id} (expires in {left}s)"
        keepalive = ctx.extra.get("keepalive")
        try:
            if ctx.progress_token is not None:
                await ctx.notify({"jsonrpc": "2.0", "method": "notifications/progress",
                                  "params": {"progressToken": ctx.progress_token, "progress": ticks,
                                             "message": text}})
            elif callable(keepalive):
                await keepalive()
            else:
                await ctx.notify({"jsonrpc": "2.0", "method": "notifications/message",
                                  "params": {"level": "info", "logger": "customs.approvals", "data": text}})
        except Exception as exc:  # the stream broke: the client is gone, so withdraw the call
            raise _GoneAway from exc
