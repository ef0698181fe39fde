"""The approval store seam: one Protocol that the in-memory and Redis stores both implement.

Every state change is atomic: whatever races (approve vs approve, approve vs deny, approve vs
expiry, cancel vs approve), an item reaches exactly one terminal state, and `claim_execution`
succeeds at most once per item across all replicas sharing the store (once more only after `hand_back`,
whose claimed call never reached the upstream: one approval, at most one execution).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.approvals.cursor import Cursor
from gateway.approvals.model import Approval

log = logging.getLogger("customs.approvals")

EventSink = Callable[[dict[str, Any]], None]
Listener = Callable[[str], None]
# How far one page with a state filter looks: LIST_WINDOW items of any state after its cursor (both stores alike),
# then it ends with a next cursor there; `pending` alone looks through every pending call. Unfiltered, a page is the
# next `limit` items.
LIST_WINDOW = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; `next` is where the following page starts (None: nothing after it)."""

    items: builtins.list[Approval]
    next: Cursor | None


class ApprovalStore(Protocol):
    """Pending calls and their decisions. Redis-backed stores raise GatewayError("approval_unavailable")."""

    on_event: EventSink | None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create_or_join(self, draft: Approval, *, link_s: float) -> tuple[Approval, bool]:
        """The live item for `draft.key` (pending, approved-unexecuted, or denied — reported to
        retries; expired — reported once), else store `draft` as a new pending item. Returns (item, created).
        An approval is usable by a retry for `link_s` after the item's creation; a denial or an expiry is
        reported for as long as the item is kept."""
        ...

    async def get(self, approval_id: str) -> Approval:
        """The item (expired first if its time is up); ApprovalNotFound if unknown."""
        ...

    async def list(self, states: Sequence[str] | None = None, limit: int = 100) -> list[Approval]:
        """The first page's items (`page(states, limit).items`)."""
        ...

    async def page(self, states: Sequence[str] | None = None, limit: int = 100, after: Cursor | None = None) -> Page:
        """Up to `limit` items strictly after `after` (from the newest when None), newest first, optionally only
        those in `states`: found among the next LIST_WINDOW items, or among every pending item when `states` is
        just pending (ordered by expiry: cursor.order_for). `next` is None once no item is left after the page; a
        page may be short, even empty, with a `next` (the window ended first). InvalidCursor for a cursor of
        another order."""
        ...

    async def decided(self, limit: int) -> builtins.list[Approval]:
        """The `limit` latest decided items (any state but pending), latest decision first: the page's history.
        A listing by creation would leave out a call held long before the newer calls decided since."""
        ...

    async def cursor_key(self) -> bytes:
        """The AES-GCM key listing cursors are sealed with (cursor.encode): the same on every replica of this
        store, so a next_cursor from one is read by another."""
        ...

    async def decide(self, approval_id: str, approver: str, outcome: str, comment: str | None) -> Approval:
        """Record one approver's approve/deny. Raises AlreadyDecided (also when it just expired,
        or this approver already voted), ApprovalNotFound."""
        ...

    async def wait(self, approval_id: str, timeout_s: float) -> Approval:
        """Return when the item changes on any replica, or after `timeout_s` (the current item)."""
        ...

    async def cancel(self, approval_id: str, state: str = "cancelled", actor: str | None = None) -> Approval:
        """Move a pending item to `cancelled` / `abandoned` / `expired`; no-op if already terminal."""
        ...

    async def withdraw(self, approval_id: str, actor: str | None = None) -> Approval:
        """A held request went away (cancelled, disconnected) after leaving its `hold`: move the item to
        `cancelled` unless another request (an identical call, on any live replica) still holds it, which
        keeps waiting on it. No-op if already terminal."""
        ...

    async def forget(self, approval_id: str) -> None:
        """The item's binding key no longer leads to it (its expiry was told to the waiting caller, so an
        identical retry asks anew rather than hearing of that expiry again)."""
        ...

    async def claim_execution(self, approval_id: str) -> bool:
        """True exactly once for an approved item (until a `hand_back`): the caller may forward the call (then
        `settle` or `hand_back` it)."""
        ...

    async def settle(self, approval_id: str, not_executed: str | None) -> None:
        """After a claimed call: record `executed` (None: it was forwarded) or that it never ran and why
        (`not_executed`; the item stays claimed, so the approval is used all the same)."""
        ...

    async def hand_back(self, approval_id: str, why: str) -> bool:
        """Instead of `settle`, for a claimed call that never reached the upstream for a reason the agent's retry
        fixes (its token expired while the call was held): the item is approved and unclaimed again (True), bound
        anew to the call until its approval's use ends, so the identical retry is released by it, once. Only while
        the item is approved and claimed by this call (its claim took the call's binding), before its use window
        ends, and when no other live item binds the call now (one an identical call would join: pending and not
        due, denied, or approved and unused within its window; a binding to a pruned, expired, cancelled or used
        item is free). Otherwise it is settled as `not_executed: why` (False). Both stores decide alike.
        Recorded `handed_back` (or `not_executed`) with `detail` why; False for an item not claimed or settled."""
        ...

    async def count_pending(self) -> int:
        """How many items are pending and not yet due, store-wide (all replicas). One cheap read, no
        side effects: it feeds the pending gauge, so it must not expire items itself."""
        ...

    async def expire_due(self) -> builtins.list[Approval]:
        """Mark pending items whose time is up as expired."""
        ...

    async def sweep_abandoned(self) -> builtins.list[Approval]:
        """Mark pending items held by replicas that are gone (and by no live one) as abandoned."""
        ...

    def hold(self, approval_id: str) -> AbstractAsyncContextManager[None]:
        """While entered, this replica is known to be waiting on the item (for the abandon sweep)."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(approval_id)` on every change seen (any replica)."""
        ...

    def remove_listener(self, listener: Listener) -> None: ...


def emit(sink: EventSink | None, record: dict[str, Any]) -> None:
    """Hand a state change to the decision log; a failing sink never breaks the approval flow."""
    if sink is None:
        return
    try:
        sink(record)
    except Exception:
        log.exception("approval event sink failed")


def notify_listeners(listeners: Sequence[Listener], approval_id: str) -> None:
    for listener in list(listeners):
        try:
            listener(approval_id)
        except Exception:
            log.exception("approval listener failed")


async def run_to_end(step: Awaitable[T]) -> T:
    """Await `step` to its end even if the caller is cancelled meanwhile (then re-raise the cancellation).

    For the Redis store's state changes (a hold's count and release, a withdrawal, a decision, a claim and its
    settling): Redis may have run a script whose reply a cancellation cut off, and what it changed must still be
    counted, released or recorded. `asyncio.shield` alone returns at the cancellation, leaving the step racing
    whatever the caller does next.
    """
    task = asyncio.ensure_future(step)
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return task.result()
