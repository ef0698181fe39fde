"""The shared approval store on Redis: several replicas hold, decide and release the same pending calls.

Each transition is one Lua script (atomic); a pub/sub channel wakes waiters on every replica (redis_wakeups); each
replica heartbeats a holder id so a sweeper can mark items whose waiting replica died as abandoned.
Any Redis failure surfaces as GatewayError("approval_unavailable"): callers fail closed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry  # the asyncio client's own (redis 8 warns about the sync one)
from redis.backoff import ExponentialBackoff

from gateway.approvals import redis_scripts as lua
from gateway.approvals.cursor import CREATED, EXPIRY, Cursor, check, order_for, shared_key
from gateway.approvals.model import TERMINAL, AlreadyDecided, Approval, ApprovalNotFound, Vote, event
from gateway.approvals.redis_codec import approval_from_hash, as_hash, text
from gateway.approvals.redis_listing import walk_page
from gateway.approvals.redis_wakeups import TRANSIENT, Wakeups
from gateway.approvals.store import LIST_WINDOW, EventSink, Listener, Page, emit, run_to_end
from gateway.errors import GatewayError

log = logging.getLogger("customs.approvals.redis")
T = TypeVar("T")


class RedisApprovalStore:
    """Approvals in Redis under `<prefix>approvals:`; `client` is a redis.asyncio.Redis (bounded pool)."""

    def __init__(self, client: Any, prefix: str = "customs:", *, clock: Callable[[], float] = time.time,
                 heartbeat_s: float = 5.0, keep_s: float = 7 * 86400, on_event: EventSink | None = None,
                 owns_client: bool = False) -> None:
        self.on_event = on_event
        self.holder = uuid.uuid4().hex
        self._client = client
        self._owns_client = owns_client
        self._p = prefix + "approvals:"
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._keep_ms = int(keep_s * 1000)
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in (
            "CREATE_OR_JOIN", "DECIDE", "CANCEL", "WITHDRAW", "CLAIM", "NOT_EXECUTED", "HAND_BACK", "FORGET",
            "HEARTBEAT", "HOLD", "ABANDON", "PRUNE")}
        self._wakeups = Wakeups()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # What a held call that went away during an outage could not do: its hold's release (counts per item) and
        # its withdrawal (the actor). Housekeeping does it once Redis answers again (_settle_owed).
        self._owed_releases: dict[str, int] = {}
        self._owed_withdrawals: dict[str, str | None] = {}

    @classmethod
    def from_url(cls, url: str, prefix: str = "customs:", *, max_connections: int = 64,
                 **kwargs: Any) -> RedisApprovalStore:
        """A store owning its own client (tests, benchmarks); the gateway passes its shared client."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_timeout=5, socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
        return cls(aioredis.Redis(connection_pool=pool), prefix, owns_client=True, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin heartbeats + sweeps and the pub/sub reader. Redis being down is not fatal here."""
        loop = asyncio.get_running_loop()
        reader = self._wakeups.read(self._client, self._p + "events", lambda: self._closing)
        self._tasks = [loop.create_task(reader, name="approvals-pubsub"),
                       loop.create_task(self._housekeeping(), name="approvals-sweeper")]
        # so a change made right after start-up wakes our waiters; bounded: Redis may be down
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeups.subscribed.wait(), 2.0)

    async def close(self) -> None:
        self._closing = True
        pending = set(self._tasks)
        while pending:  # redis-py can swallow a cancel that lands mid-command: cancel until done
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._tasks = []
        self._wakeups.release_waiters()
        with contextlib.suppress(*TRANSIENT):
            await self._client.hdel(self._p + "holders", self.holder)
        if self._owns_client:
            await self._client.aclose()
            await self._client.connection_pool.aclose()

    async def _housekeeping(self) -> None:
        while not self._closing:
            try:
                await self.heartbeat()
                await self._settle_owed()
                await self.expire_due()
                await self.sweep_abandoned()
                await self.prune_history()
            except GatewayError:
                log.debug("approval housekeeping skipped: redis unavailable")
            except Exception:
                log.exception("approval housekeeping failed")
            await asyncio.sleep(self._heartbeat_s)  # a periodic timer, not synchronisation

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except TRANSIENT as exc:
            raise GatewayError("approval_unavailable", data={"detail": type(exc).__name__}) from exc

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._run(self._scripts[name](keys=[], args=[self._p, *args]))

    def _emit(self, item: Approval, transition: str, actor: str | None = None, comment: str | None = None,
              detail: str | None = None) -> None:
        emit(self.on_event, event(item, transition, actor=actor, comment=comment, at=self._clock(), detail=detail))

    # -- the store ---------------------------------------------------------------------------

    async def create_or_join(self, draft: Approval, *, link_s: float) -> tuple[Approval, bool]:
        record = draft.to_record()
        result = await self._script("CREATE_OR_JOIN", draft.id, self._clock(), int(link_s * 1000), self._keep_ms,
                                    draft.key, draft.expires_at, draft.created_at, draft.quorum, json.dumps(record), 1,
                                    repr(draft.created_at + link_s))
        item = approval_from_hash(as_hash(result[2]))
        status = int(result[1])
        if status == 1:
            self._emit(item, "created", actor=item.principal)
        elif status == 2:  # the script found it due and expired it
            self._emit(item, "expired")
        return item, status == 1

    async def get(self, approval_id: str) -> Approval:
        fields = await self._run(self._client.hgetall(self._p + "item:" + approval_id))
        if not fields:
            raise ApprovalNotFound(approval_id)
        item = approval_from_hash({text(k): text(v) for k, v in fields.items()})
        if item.pending and self._clock() >= item.expires_at:
            return await self._finish(approval_id, "expired", only_if_due=True)
        return item

    async def list(self, states: Sequence[str] | None = None, limit: int = 100) -> list[Approval]:
        return (await self.page(states, limit)).items

    async def page(self, states: Sequence[str] | None = None, limit: int = 100, after: Cursor | None = None) -> Page:
        await self.expire_due()
        order = order_for(states)
        check(after, order)
        source = "pending" if order == EXPIRY else "all"
        # A state filter looks through LIST_WINDOW items a page (ids of items gone from Redis do not count), as the
        # memory store does; pending alone through the whole pending index.
        window = LIST_WINDOW if states is not None and order == CREATED else None

        async def load(ids: Sequence[str]) -> dict[str, Approval]:
            return await self._load_many(ids, source)

        return await walk_page(self._client, self._run, load, self._p + source, order, states, limit, after, window)

    async def _load_many(self, ids: Sequence[str], source: str) -> dict[str, Approval]:
        """The items of `ids` still in Redis, by id; the ids of items gone are dropped from the index."""
        pipe = self._client.pipeline(transaction=False)
        for approval_id in ids:
            pipe.hgetall(self._p + "item:" + approval_id)
        rows = await self._run(pipe.execute())
        out: dict[str, Approval] = {}
        gone: builtins.list[str] = []
        for approval_id, fields in zip(ids, rows, strict=True):
            if not fields:
                gone.append(approval_id)  # aged out of history
                continue
            out[approval_id] = approval_from_hash({text(k): text(v) for k, v in fields.items()})
        if gone:
            await self._run(self._client.zrem(self._p + source, *gone))
        return out

    async def decided(self, limit: int) -> builtins.list[Approval]:
        # The `decided` index (score decided_at), plus the newest decided by creation: items decided by replicas
        # from before that index (a rolling upgrade) are in `all` only.
        recent = (await self.page(sorted(TERMINAL), limit)).items
        ids = [text(i) for i in await self._run(self._client.zrevrange(self._p + "decided", 0, limit - 1))]
        latest = {**{i.id: i for i in recent}, **await self._load_many(ids, "decided")}
        return sorted(latest.values(), key=lambda i: i.decided_at or i.created_at, reverse=True)[:limit]

    async def cursor_key(self) -> bytes:
        """The key every replica sharing this Redis seals listing cursors with (`<prefix>approvals:cursor_key`), read
        at each listing: one kept from the first read went on sealing with a key deleted or lost since (a Redis
        restarted without persistence) while other replicas made a new one, so their cursors failed on each other."""
        return await self._run(shared_key(self._client, self._p + "cursor_key"))

    async def decide(self, approval_id: str, approver: str, outcome: str, comment: str | None) -> Approval:
        if outcome not in ("approved", "denied"):
            raise ValueError(f"unknown outcome {outcome!r}")
        # To its end, the record included: the gateway cancels an approver's request whose client went away, and
        # the change Redis made would otherwise go unrecorded (so in _finish).
        return await run_to_end(self._decide(approval_id, approver, outcome, comment))

    async def _decide(self, approval_id: str, approver: str, outcome: str, comment: str | None) -> Approval:
        now = self._clock()
        vote = json.dumps(asdict(Vote(approver, outcome, comment, now)))
        result = await self._script("DECIDE", approval_id, now, self._keep_ms, approver, outcome, vote)
        status = text(result[0])
        if status == "missing":
            raise ApprovalNotFound(approval_id)
        item = approval_from_hash(as_hash(result[1]))
        if status == "expired":  # its time was up: the script expired it, a change the decision log must get
            self._emit(item, "expired")
        if status in ("decided", "expired"):
            raise AlreadyDecided(item)
        if status == "voted":
            raise AlreadyDecided(item, "already_voted")
        self._emit(item, item.state if not item.pending else "vote", actor=approver, comment=comment)
        return item

    async def wait(self, approval_id: str, timeout_s: float) -> Approval:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changed = self._wakeups.waiter(approval_id)
            item = await self.get(approval_id)
            remaining = deadline - loop.time()
            if remaining <= 0 or not item.pending:
                return item
            # A wake-up can be stale (the item's own creation, another replica's heartbeat): wait again
            # until the item is really decided or the time is up.
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return await self.get(approval_id)

    async def _finish(self, approval_id: str, state: str, *, only_if_due: bool, actor: str | None = None) -> Approval:
        return await run_to_end(self._finish_step(approval_id, state, only_if_due, actor))

    async def _finish_step(self, approval_id: str, state: str, only_if_due: bool, actor: str | None) -> Approval:
        result = await self._script("CANCEL", approval_id, self._clock(), self._keep_ms, state,
                                    "1" if only_if_due else "0")
        if not result:
            raise ApprovalNotFound(approval_id)
        item = approval_from_hash(as_hash(result[1]))
        if int(result[0]) == 1:  # `expired` when its time was up, whatever was asked: no actor then
            self._emit(item, item.state, actor=actor if item.state == state else None)
        return item

    async def cancel(self, approval_id: str, state: str = "cancelled", actor: str | None = None) -> Approval:
        return await self._finish(approval_id, state, only_if_due=False, actor=actor)

    async def withdraw(self, approval_id: str, actor: str | None = None) -> Approval:
        try:
            result = await self._script("WITHDRAW", approval_id, self._clock(), self._keep_ms,
                                        int(self._heartbeat_s * 3000))
        except GatewayError:
            self._owed_withdrawals[approval_id] = actor  # made once Redis is back (_settle_owed)
            raise
        if not result:
            raise ApprovalNotFound(approval_id)
        item = approval_from_hash(as_hash(result[1]))
        if int(result[0]) == 1:  # `expired` when its time was up: no actor then
            self._emit(item, item.state, actor=actor if item.state == "cancelled" else None)
        return item

    async def forget(self, approval_id: str) -> None:
        await self._script("FORGET", approval_id)

    async def claim_execution(self, approval_id: str) -> bool:
        # `executed` is recorded by `settle`, once it is known whether the call reached the upstream.
        return int(await self._script("CLAIM", approval_id, self._clock(), self._keep_ms)) == 1

    async def settle(self, approval_id: str, not_executed: str | None) -> None:
        if not_executed is None:  # read as stored (no expiry on the way), recorded only for a claimed call
            fields = await self._run(self._client.hgetall(self._p + "item:" + approval_id))
            item = approval_from_hash({text(k): text(v) for k, v in fields.items()}) if fields else None
            if item is not None and item.executed:
                self._emit(item, "executed")
            return
        result = await self._script("NOT_EXECUTED", approval_id, not_executed)
        if result:
            self._emit(approval_from_hash(as_hash(result)), "not_executed", detail=not_executed)

    async def hand_back(self, approval_id: str, why: str) -> bool:
        result = await self._script("HAND_BACK", approval_id, self._clock(), why)
        if result:  # the script's status is the change made: handed_back, or not_executed (used up after all)
            self._emit(approval_from_hash(as_hash(result[1])), text(result[0]), detail=why)
        return bool(result) and text(result[0]) == "handed_back"

    async def expire_due(self) -> builtins.list[Approval]:
        due = await self._run(self._client.zrangebyscore(self._p + "pending", "-inf", self._clock()))
        return [await self._finish(text(i), "expired", only_if_due=True) for i in due]

    async def count_pending(self) -> int:
        # The `pending` index is scored by expiry: items past it (not yet expired by housekeeping) are
        # left out, so every replica reports the same number whatever its sweep timing. O(log n).
        return int(await self._run(self._client.zcount(self._p + "pending", f"({self._clock()!r}", "+inf")))

    async def prune_history(self, batch: int = 500) -> int:
        """Drop `all` entries whose item aged out (kept `keep_s` after its decision). Listings drop the ones
        they come across, but they read the newest first: without this the index grows forever."""
        cutoff = self._clock() - self._keep_ms / 1000
        return int(await self._script("PRUNE", cutoff, batch))

    async def heartbeat(self) -> None:
        await self._script("HEARTBEAT", self.holder)

    async def sweep_abandoned(self) -> builtins.list[Approval]:
        ids = await self._run(self._client.zrange(self._p + "pending", 0, -1))
        dead_after_ms = int(self._heartbeat_s * 3000)
        out: builtins.list[Approval] = []
        for raw in ids:
            approval_id = text(raw)
            if int(await self._script("ABANDON", approval_id, self._clock(), self._keep_ms, dead_after_ms)) == 1:
                item = await self.get(approval_id)
                self._emit(item, "abandoned")
                out.append(item)
        return out

    async def _settle_owed(self) -> None:
        """Release the holds and make the withdrawals that failed during an outage, releases first (a withdrawal
        is refused while this live replica still counts a hold). A hold this count left behind kept the item
        pending until it expired, and kept later identical calls that went away from withdrawing it."""
        for approval_id in list(self._owed_releases):
            count = self._owed_releases.pop(approval_id)
            try:
                await self._script("HOLD", approval_id, self.holder, -count)
            except GatewayError:
                self._owed_releases[approval_id] = self._owed_releases.get(approval_id, 0) + count
                raise
        for approval_id in list(self._owed_withdrawals):
            actor = self._owed_withdrawals.pop(approval_id)
            with contextlib.suppress(ApprovalNotFound):  # lost with a Redis restarted without persistence
                await self.withdraw(approval_id, actor)

    @asynccontextmanager
    async def hold(self, approval_id: str) -> AsyncIterator[None]:
        # Counted and released to the end whatever cancels the caller: a count left behind would keep the item
        # from being withdrawn (store.run_to_end). A hold or release Redis is down for is owed (_settle_owed, where a
        # negative release is a hold): a wait that begins in an outage waits through it, as one begun before does.
        with contextlib.suppress(GatewayError):
            await self.heartbeat()
        taken = asyncio.ensure_future(self._script("HOLD", approval_id, self.holder, 1))
        owed = False
        try:
            try:
                await run_to_end(taken)
            except GatewayError:
                owed = True
                self._owed_releases[approval_id] = self._owed_releases.get(approval_id, 0) - 1
            yield
        finally:
            if owed or (taken.done() and not taken.cancelled() and taken.exception() is None):
                released = asyncio.ensure_future(self._script("HOLD", approval_id, self.holder, -1))
                try:
                    with contextlib.suppress(GatewayError):
                        await run_to_end(released)
                finally:  # failed, also when a further cancellation came meanwhile (it is what run_to_end raises)
                    if not released.cancelled() and isinstance(released.exception(), GatewayError):
                        self._owed_releases[approval_id] = self._owed_releases.get(approval_id, 0) + 1

    def add_listener(self, listener: Listener) -> None:
        self._wakeups.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._wakeups.listeners:
            self._wakeups.listeners.remove(listener)
