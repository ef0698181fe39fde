"""The embedded approval store: one process, state in dicts, atomic because no check awaits before its set."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from gateway.approvals.cursor import CREATED, EXPIRY, Cursor, check, new_key, order_for
from gateway.approvals.model import AlreadyDecided, Approval, ApprovalNotFound, Vote, event
from gateway.approvals.store import LIST_WINDOW, EventSink, Listener, Page, emit, notify_listeners


class MemoryApprovalStore:
    """Approvals of this process only. A restart forgets them (use Redis for durability/replicas).

    Atomicity: every transition is a synchronous check-and-set between two awaits, so concurrent
    coroutines on the one event loop cannot interleave inside it.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, history: int = 10_000,
                 on_event: EventSink | None = None, sweep_s: float = 5.0) -> None:
        self.on_event = on_event
        self._clock = clock
        self._history = history
        self._sweep_s = sweep_s
        self._sweeper: asyncio.Task[None] | None = None
        self._items: OrderedDict[str, Approval] = OrderedDict()
        # Sorted (score, id) of every item by creation, and of pending ones by expiry: a listing's cursor is a
        # position in one of them (bisect), as the Redis store's sorted sets `all` and `pending`.
        self._by_created: list[tuple[float, str]] = []
        self._by_expiry: list[tuple[float, str]] = []
        self._by_decided: list[tuple[float, str]] = []  # decided items by decision: the page's history (decided)
        self._keys: dict[str, tuple[str, float]] = {}  # binding key -> (id, an approval usable until)
        self._changed: dict[str, asyncio.Event] = {}
        self._holds: dict[str, int] = {}  # approval id -> requests waiting on it now
        self._claimed: dict[str, float] = {}  # claimed, not yet settled: id -> its approval usable until (hand_back)
        self._listeners: list[Listener] = []
        self._cursor_key = new_key()  # one process: its cursors need to read back here only

    async def start(self) -> None:
        """Expire due items every `sweep_s` (as the Redis store's housekeeping does): the `expired` change
        reaches the decision log and the page's live updates when the time is up, not when someone looks."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="approvals-expiry")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)  # a periodic timer, not synchronisation
            await self.expire_due()

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        for changed in self._changed.values():
            changed.set()

    # -- transitions -------------------------------------------------------------------------

    def _store(self, item: Approval, transition: str, actor: str | None = None,
               comment: str | None = None, detail: str | None = None) -> Approval:
        known = self._items.get(item.id)
        self._items[item.id] = item
        if known is None:
            insort(self._by_created, (item.created_at, item.id))
        if item.pending and (known is None or not known.pending):
            insort(self._by_expiry, (item.expires_at, item.id))
        elif not item.pending and known is not None and known.pending:
            _unindex(self._by_expiry, (known.expires_at, known.id))
            insort(self._by_decided, _decided_key(item))
        changed = self._changed.pop(item.id, None)
        if changed is not None:
            changed.set()
        notify_listeners(self._listeners, item.id)
        if transition:
            emit(self.on_event, event(item, transition, actor=actor, comment=comment, at=self._clock(), detail=detail))
        return item

    def _expire_if_due(self, item: Approval) -> Approval:
        if item.pending and self._clock() >= item.expires_at:
            return self._store(item.with_state("expired", decided_at=self._clock()), "expired")
        return item

    def _trim(self) -> None:
        """Bound history: drop the oldest decided items (never a pending one)."""
        excess = len(self._items) - self._history
        if excess > 0:
            for item_id in [i.id for i in self._items.values() if not i.pending][:excess]:
                gone = self._items.pop(item_id)
                _unindex(self._by_created, (gone.created_at, gone.id))
                _unindex(self._by_decided, _decided_key(gone))
        if len(self._keys) > 2 * self._history:  # a link lives as long as its item: at most one per item
            self._keys = {k: v for k, v in self._keys.items() if v[0] in self._items}
        if len(self._claimed) > self._history:  # settled calls leave it; this bounds what a lost settle left
            self._claimed = {k: v for k, v in self._claimed.items() if k in self._items}

    async def create_or_join(self, draft: Approval, *, link_s: float) -> tuple[Approval, bool]:
        now = self._clock()
        linked = self._keys.get(draft.key)
        if linked is not None and linked[0] in self._items:
            current = self._expire_if_due(self._items[linked[0]])
            if current.pending or current.state == "denied" or (current.claimable and now < linked[1]):
                return current, False
            if current.state == "expired":  # told once (approval_expired); the next retry asks anew
                del self._keys[draft.key]
                return current, False
        self._keys[draft.key] = (draft.id, now + link_s)
        self._store(draft, "created", actor=draft.principal)
        self._trim()
        return draft, True

    async def get(self, approval_id: str) -> Approval:
        item = self._items.get(approval_id)
        if item is None:
            raise ApprovalNotFound(approval_id)
        return self._expire_if_due(item)

    async def list(self, states: Sequence[str] | None = None, limit: int = 100) -> list[Approval]:
        return (await self.page(states, limit)).items

    async def page(self, states: Sequence[str] | None = None, limit: int = 100, after: Cursor | None = None) -> Page:
        await self.expire_due()
        order = order_for(states)
        check(after, order)
        index = self._by_expiry if order == EXPIRY else self._by_created
        end = len(index) if after is None else bisect_left(index, after.key)  # entries before it: strictly after
        # A state filter looks through LIST_WINDOW items a page, as the Redis store does; pending alone through
        # every pending item (its own index).
        window = LIST_WINDOW if states is not None and order == CREATED else len(index)
        found: builtins.list[Approval] = []
        at = end
        while at > 0 and len(found) < limit and end - at < window:
            at -= 1
            item = self._items[index[at][1]]
            if states is None or item.state in states:
                found.append(item)
        return Page(found, Cursor(order, *index[at]) if at > 0 else None)

    async def cursor_key(self) -> bytes:
        return self._cursor_key

    async def decided(self, limit: int) -> builtins.list[Approval]:
        await self.expire_due()
        return [self._items[item_id] for _, item_id in reversed(self._by_decided[-limit:])]

    async def decide(self, approval_id: str, approver: str, outcome: str, comment: str | None) -> Approval:
        if outcome not in ("approved", "denied"):
            raise ValueError(f"unknown outcome {outcome!r}")
        item = await self.get(approval_id)
        if not item.pending:
            raise AlreadyDecided(item)
        if any(v.by == approver for v in item.votes):
            raise AlreadyDecided(item, "already_voted")
        now = self._clock()
        votes = (*item.votes, Vote(approver, outcome, comment, now))
        if outcome == "denied":
            updated = item.with_state("denied", votes=votes, decided_by=(approver,), comment=comment, decided_at=now)
            return self._store(updated, "denied", approver, comment)
        approvers = tuple(v.by for v in votes if v.outcome == "approved")
        if len(approvers) >= item.quorum:
            updated = item.with_state("approved", votes=votes, decided_by=approvers, comment=comment, decided_at=now)
            return self._store(updated, "approved", approver, comment)
        return self._store(item.with_state("pending", votes=votes), "vote", approver, comment)

    async def wait(self, approval_id: str, timeout_s: float) -> Approval:
        item = await self.get(approval_id)
        if timeout_s <= 0:
            return item
        changed = self._changed.get(approval_id)
        if changed is None:
            changed = self._changed[approval_id] = asyncio.Event()
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            pass
        return await self.get(approval_id)

    async def cancel(self, approval_id: str, state: str = "cancelled", actor: str | None = None) -> Approval:
        item = await self.get(approval_id)
        if not item.pending:
            return item
        return self._store(item.with_state(state, decided_at=self._clock()), state, actor)

    async def withdraw(self, approval_id: str, actor: str | None = None) -> Approval:
        if self._holds.get(approval_id):  # an identical call still waits on it: only the caller's request ends
            return await self.get(approval_id)
        return await self.cancel(approval_id, "cancelled", actor)

    async def forget(self, approval_id: str) -> None:
        item = self._items.get(approval_id)
        if item is not None and self._keys.get(item.key, ("",))[0] == approval_id:
            del self._keys[item.key]

    async def claim_execution(self, approval_id: str) -> bool:
        item = self._items.get(approval_id)
        if item is None or not item.claimable:
            return False
        linked = self._keys.get(item.key)
        if linked is not None and linked[0] == approval_id:
            del self._keys[item.key]  # the next identical call needs a new approval
            self._claimed[approval_id] = linked[1]
        self._store(item.with_state("approved", executed=True), "")  # recorded by `settle`, once it is known
        return True

    async def settle(self, approval_id: str, not_executed: str | None) -> None:
        self._claimed.pop(approval_id, None)
        item = self._items.get(approval_id)
        if item is None or not item.executed:
            return
        if not_executed is None:
            emit(self.on_event, event(item, "executed", at=self._clock()))
        else:
            self._store(replace(item, not_executed=not_executed), "not_executed", detail=not_executed)

    async def hand_back(self, approval_id: str, why: str) -> bool:
        until = self._claimed.pop(approval_id, None)  # None: the claim took no binding (bound no call)
        item = self._items.get(approval_id)
        if item is None or item.state != "approved" or not item.executed or item.not_executed is not None:
            return False  # not claimed, or already settled
        now = self._clock()
        linked = self._keys.get(item.key)
        taken = linked is not None and linked[0] != approval_id and self._binds(linked, now)
        if until is None or now >= until or taken:
            await self.settle(approval_id, why)
            return False
        self._keys[item.key] = (approval_id, until)
        self._store(replace(item, executed=False), "handed_back", detail=why)
        return True

    def _binds(self, linked: tuple[str, float], now: float) -> bool:
        """Whether a binding is live: an identical call would join its item (create_or_join: pending and not due,
        denied, or approved and unused within its window). One to a pruned, expired or used item is not."""
        item = self._items.get(linked[0])
        return item is not None and ((item.pending and now < item.expires_at) or item.state == "denied"
                                     or (item.claimable and now < linked[1]))

    async def expire_due(self) -> builtins.list[Approval]:
        now = self._clock()
        due = [i for i in self._items.values() if i.pending and now >= i.expires_at]
        return [self._expire_if_due(i) for i in due]

    async def count_pending(self) -> int:
        # Due items count as gone (as in Redis, where the index is by expiry): the sweep expires them only
        # every `sweep_s`, and counting must not have side effects.
        now = self._clock()
        return sum(1 for i in self._items.values() if i.pending and now < i.expires_at)

    async def sweep_abandoned(self) -> builtins.list[Approval]:
        return []  # one process: a restart starts empty, so nothing can be left behind

    @asynccontextmanager
    async def hold(self, approval_id: str) -> AsyncIterator[None]:
        self._holds[approval_id] = self._holds.get(approval_id, 0) + 1
        try:
            yield
        finally:
            left = self._holds.pop(approval_id) - 1
            if left > 0:
                self._holds[approval_id] = left

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def stats(self) -> dict[str, Any]:
        return {"items": len(self._items), "keys": len(self._keys), "waiting": len(self._changed)}


def _decided_key(item: Approval) -> tuple[float, str]:
    return (item.decided_at or item.created_at, item.id)


def _unindex(index: builtins.list[tuple[float, str]], key: tuple[float, str]) -> None:
    at = bisect_left(index, key)
    if at < len(index) and index[at] == key:
        del index[at]
