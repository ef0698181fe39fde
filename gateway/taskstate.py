"""Stateful policy context: what this task has already done (`context.task`).

Before a call is decided, its facts are *reserved* atomically in one step (one Redis round trip):
the previous call count of this tool, the running totals of configured numeric arguments with
this call's values added (`upstreams[].tools.<tool>.sum_args`), and the tools already seen. Two
concurrent calls therefore see each other, so a cap such as "at most 10,000 paid per task" holds
across replicas. A call that did not execute gives its reservation back: one never forwarded (denied,
held, failed before the upstream) and one the upstream refused with a JSON-RPC error. A forwarded call
that got a result keeps it, an `isError: true` tool result included (the tool ran and may have acted),
and so does one whose answer never came (timeout, lost connection: it may have executed).

Only positive values of a summed argument count: a cap bounds what goes out, and a negative amount
(a "refund") must not buy room for more payments in the same task. A summed argument the call carries
that does not count (zero, negative, not a number) is named in `not_counted`, so a policy can hold it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config.model import UpstreamConfig
from gateway.config.upstreams import ToolOverride
from gateway.context import CallContext
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.transport.common import never_sent

# How long a failed call's answer waits for its reservation to be given back. Redis answers in well under a
# millisecond, so the give-back lands before the agent's next call; one that hangs would hold every failed call's
# answer for the client's socket timeout (a shutdown's `approval_pending` among them): past this bound the give-back
# goes on in the background, the answer goes now.
RELEASE_WAIT_S = 0.5


class FactsStore(Protocol):
    async def reserve(self, task: str, tool: str, sums: Mapping[str, float]) -> dict[str, Any]: ...

    async def release(self, task: str, tool: str, sums: Mapping[str, float]) -> None: ...

    def in_background(self) -> set[asyncio.Future[None]]: ...


@dataclass
class _Task:
    calls: dict[str, int] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    used: float = 0.0  # monotonic time of the last reservation


def _named_by_agent(task: str) -> bool:
    """An explicit task (`<customs/task>@<principal hash>`, credentials.tasks.explicit_task_id): the agent may
    name it again after it ended (idle, task_end), unlike a session's (`s-…`) or an idle window's (`i-…`)."""
    return "@" in task


@dataclass
class MemoryFacts:
    """Single-process task facts. A session's or idle window's facts go when its task ends (`forget`, called
    by the task tracker): no call names that task again, and without that every one ever seen kept its entry.
    An explicit task's stay as Redis keeps them, `ttl_s` after its last reservation: the agent goes on naming
    it after a pause longer than `tasks.idle_s` (a payment held for a person) or a task_end, and its total
    used to start again from zero then."""

    tasks: dict[str, _Task] = field(default_factory=dict)
    ttl_s: float = 86400.0  # as RedisFacts' key TTL
    clock: Callable[[], float] = time.monotonic
    _pruned: float = 0.0

    def forget(self, task: str) -> None:
        if not _named_by_agent(task):
            self.tasks.pop(task, None)

    def _prune(self, now: float) -> None:
        """Drop explicit tasks unused for ttl_s; one pass at most every minute (amortized over reservations)."""
        if now - self._pruned < min(60.0, self.ttl_s):
            return
        self._pruned = now
        for name in [n for n, t in self.tasks.items() if now - t.used >= self.ttl_s]:
            del self.tasks[name]

    async def reserve(self, task: str, tool: str, sums: Mapping[str, float]) -> dict[str, Any]:
        now = self.clock()
        self._prune(now)
        state = self.tasks.get(task)
        if state is None:  # (not setdefault: that would build a _Task on every call to throw it away)
            state = self.tasks[task] = _Task()
        state.used = now
        previous = state.calls.get(tool, 0)
        seen = sorted(t for t, n in state.calls.items() if n > 0)
        for name, value in sums.items():
            state.totals[name] = state.totals.get(name, 0.0) + value
        state.calls[tool] = previous + 1
        return {"calls": previous, "totals": dict(state.totals), "seen_tools": seen}

    def in_background(self) -> set[asyncio.Future[None]]:
        return set()  # every give-back here is done when release returns

    async def release(self, task: str, tool: str, sums: Mapping[str, float]) -> None:
        state = self.tasks.get(task)
        if state is None:
            return
        for name, value in sums.items():
            state.totals[name] = state.totals.get(name, 0.0) - value
        left = state.calls.get(tool, 0) - 1
        if left > 0:
            state.calls[tool] = left
        else:  # as no entry: the tool may be a name an agent made up (a missing tool's give-back), kept nowhere
            state.calls.pop(tool, None)


_RESERVE = """
local calls_key, totals_key = KEYS[1], KEYS[2]
local tool, ttl = ARGV[1], tonumber(ARGV[2])
local previous = tonumber(redis.call('HGET', calls_key, tool) or '0')
local all = redis.call('HGETALL', calls_key)
local seen = {}
for i = 1, #all, 2 do if tonumber(all[i + 1]) > 0 then table.insert(seen, all[i]) end end
for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', totals_key, ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', calls_key, tool, 1)
redis.call('EXPIRE', calls_key, ttl)
redis.call('EXPIRE', totals_key, ttl)
return {previous, cjson.encode(seen), cjson.encode(redis.call('HGETALL', totals_key))}
"""

_RELEASE = """
for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], -tonumber(ARGV[i + 1])) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""


class RedisFacts:
    """Task facts shared by every replica; one script call per reservation."""

    def __init__(self, redis: Any, prefix: str, ttl_s: int = 86400) -> None:
        self._prefix = prefix + "task:"
        self._ttl = ttl_s
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._giving_back: set[asyncio.Future[None]] = set()

    def _keys(self, task: str) -> list[str]:
        return [f"{self._prefix}{task}:calls", f"{self._prefix}{task}:totals"]

    @staticmethod
    def _args(tool: str, ttl: int, sums: Mapping[str, float]) -> list[Any]:
        args: list[Any] = [tool, ttl]
        for name, value in sums.items():
            args += [name, repr(float(value))]
        return args

    async def reserve(self, task: str, tool: str, sums: Mapping[str, float]) -> dict[str, Any]:
        try:
            previous, seen, flat = await self._reserve(keys=self._keys(task), args=self._args(tool, self._ttl, sums))
        except Exception as exc:
            raise GatewayError("policy_unavailable", "Task state unavailable; call denied") from exc
        pairs = json.loads(flat) or []
        totals = {str(pairs[i]): float(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        seen_list = json.loads(seen) if isinstance(seen, (str, bytes)) else []
        return {"calls": int(previous), "totals": totals, "seen_tools": sorted(seen_list or [])}

    async def release(self, task: str, tool: str, sums: Mapping[str, float]) -> None:
        giving_back = asyncio.ensure_future(self._give_back(task, tool, sums))
        self._giving_back.add(giving_back)
        giving_back.add_done_callback(self._giving_back.discard)
        await asyncio.wait((giving_back,), timeout=RELEASE_WAIT_S)  # the give-back is not cancelled with the caller

    def in_background(self) -> set[asyncio.Future[None]]:
        """The give-backs still running after their calls answered (RELEASE_WAIT_S): shutdown awaits them."""
        return set(self._giving_back)

    async def _give_back(self, task: str, tool: str, sums: Mapping[str, float]) -> None:
        try:
            await self._release(keys=self._keys(task), args=self._args(tool, self._ttl, sums))
        except Exception:
            pass  # a reservation that cannot be returned only makes later calls stricter


def summed_args(override: ToolOverride | None, args: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """A call's values of its tool's summed arguments (`upstreams[].tools.<tool>.sum_args`), and the summed
    arguments it carries that do not count (zero, negative, not a finite number) for `context.task.not_counted`."""
    if override is None or not override.sum_args:
        return {}, []
    sums: dict[str, float] = {}
    not_counted: list[str] = []
    for name in override.sum_args:
        value = args.get(name)
        if value is None:
            continue
        # Only what goes out counts: a negative value is no credit, and text such as "1000000" (which an
        # upstream may well accept as a number) cannot be summed; policies see both in not_counted.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            sums[name] = float(value)
        else:
            not_counted.append(name)
    return sums, not_counted


class TaskStage:
    """Resolves the call's task and reserves its facts for the authorize stage (ctx.extra["task"])."""

    def __init__(self, store: FactsStore, upstreams: Mapping[str, UpstreamConfig], resolve: Any,
                 contains_secret: Any = None) -> None:
        self._store = store
        self._upstreams = upstreams
        self._resolve = resolve  # CallContext -> task id (the credential service's TaskTracker.resolve)
        self._contains_secret = contains_secret  # args -> bool, for context.args_contain_secret

    def _sums(self, ctx: CallContext) -> tuple[dict[str, float], list[str]]:
        """This call's values of the tool's summed arguments, and those that do not count (summed_args)."""
        upstream = self._upstreams.get(ctx.upstream or "")
        override = upstream.tools.get(ctx.tool.name) if upstream and ctx.tool else None
        if ctx.action != "call_tool":
            return {}, []
        return summed_args(override, ctx.args)

    async def __call__(self, ctx: CallContext) -> None:
        if self._contains_secret is not None and ctx.args:
            ctx.extra["args_contain_secret"] = bool(self._contains_secret(ctx.args))
        if ctx.task_id is None:
            ctx.task_id = self._resolve(ctx)
        if ctx.action != "call_tool" or ctx.tool is None or ctx.task_id is None:
            return
        sums, not_counted = self._sums(ctx)
        facts = await self._store.reserve(ctx.task_id, ctx.tool.cedar_id, sums)
        if not_counted:
            facts["not_counted"] = not_counted
        ctx.extra["task"] = facts
        ctx.extra["task_reservation"] = (ctx.task_id, ctx.tool.cedar_id, sums)

    def in_background(self) -> set[asyncio.Future[None]]:
        """The store's give-backs still running in the background."""
        return self._store.in_background()

    async def release(self, ctx: CallContext) -> None:
        """Give the reservation back when the call did not execute (called only when the call failed)."""
        reservation = ctx.extra.pop("task_reservation", None)
        if reservation is None:
            return
        # Only the JSON-RPC errors that refuse the request itself (invalid request, unknown method, invalid
        # params), an open circuit or a connection never made prove nothing ran. Any other upstream error (-32603
        # after a payment went out), a timeout or a dropped connection may have run, so it keeps counting: a cap
        # must not be escapable by failing late.
        if not ctx.extra.get("forwarded") or _refused(ctx.error) or never_sent(ctx.error):
            await self._store.release(*reservation)


_REFUSALS = frozenset({-32600, -32601, -32602})  # JSON-RPC: invalid request, method not found, invalid params


def _refused(error: BaseException | None) -> bool:
    return isinstance(error, UpstreamErrorResponse) and error.error.get("code") in _REFUSALS
