"""Which minted credentials belong to which task, and which are revoked: in memory or in Redis.

Every minted token's `jti` is recorded under its task with its expiry. Ending a task marks it
ended and revokes all its jtis in one step; a token minted concurrently for an ended task is
refused (`TaskEnded`) rather than left unrevoked. Every record expires with the token it
describes, so neither store grows without bound. With Redis, all replicas see the same answer.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from gateway.credentials.task_cache import PruneLimit


class TaskEnded(Exception):
    """The task has ended: no new credential may be minted for it."""


class TaskState(NamedTuple):
    ended: bool  # no new credential for it (until the end marker lapses)
    recorded: bool  # some unexpired token of it is on record: none means any cached one was revoked or expired


class RevocationStore(Protocol):
    async def record(self, task_id: str, jti: str, exp: float) -> None:
        """Remember that `jti` (valid until `exp`, epoch seconds) belongs to `task_id`. Raises TaskEnded."""

    async def revoke_task(self, task_id: str, *, final: bool = True) -> list[str]:
        """End the task: revoke every unexpired jti recorded for it and return them. `final`: refuse new
        credentials for it too, until the end marker lapses (not for an idle end: the agent may go on)."""

    async def is_revoked(self, jti: str) -> bool: ...

    async def is_active(self, task_id: str, jti: str) -> bool:
        """May introspection call the token `jti` (of `task_id`, signed by us, unexpired) active? Not when it
        is revoked, nor when this store cannot know whether it was (a memory store's token of another process)."""

    async def is_ended(self, task_id: str, *, used_for_s: float | None = None) -> bool:
        """Has the task ended (on any replica)? `used_for_s`: also note that it is in use now, for that long
        (`used_lately`)."""

    async def check(self, task_id: str, *, used_for_s: float | None = None) -> TaskState:
        """`is_ended`, and whether the task has tokens on record, in the same step."""

    async def used_lately(self, task_id: str) -> bool:
        """Was the task in use (on any replica) within the `used_for_s` of its last `is_ended`?"""

    shared: bool  # several replicas see this store: a task may live on beyond one replica's view of it
    # When this replica last found the store had lost its data (-inf: never): ended markers of tasks begun
    # before then may be gone, so the task tracker ends those tasks again (fail closed).
    lost_at: float


_PRUNE_FLOOR = 10_000
_TASK_FLOOR = 64  # a task's own record is pruned of expired tokens past this many (then twice what survived)


class MemoryRevocations:
    """Single-process store (the embedded default and unit tests)."""

    shared = False
    lost_at = -math.inf  # the process's own memory: lost only with the process (and the tasks it knew)

    def __init__(self, *, ended_ttl_s: float = 3660.0, clock: Callable[[], float] = time.time) -> None:
        self._tasks: dict[str, dict[str, float]] = {}
        self._revoked: dict[str, float] = {}
        self._ended: dict[str, float] = {}
        self._ended_ttl_s = ended_ttl_s
        self._clock = clock
        self._task_limits: dict[str, int] = {}  # task -> the size of its record that prunes it next
        # Pruning scans everything, so it runs only past a limit that then doubles over what survived:
        # pruning on every ended task would make a sweep ending thousands of sessions quadratic.
        self.limit = PruneLimit(_PRUNE_FLOOR)

    def _size(self) -> int:
        return len(self._tasks) + len(self._revoked) + len(self._ended)

    def _maybe_prune(self, now: float) -> None:
        if self.limit.due(self._size()):
            self._prune(now)
            self.limit.pruned(self._size())

    def _prune(self, now: float) -> None:
        self._revoked = {j: exp for j, exp in self._revoked.items() if exp > now}
        self._ended = {t: until for t, until in self._ended.items() if until > now}
        for task_id in list(self._tasks):
            live = {j: exp for j, exp in self._tasks[task_id].items() if exp > now}
            if live:
                self._tasks[task_id] = live
            else:
                del self._tasks[task_id]
        self._task_limits = {t: n for t, n in self._task_limits.items() if t in self._tasks}

    async def record(self, task_id: str, jti: str, exp: float) -> None:
        now = self._clock()
        if self._ended.get(task_id, 0) > now:
            raise TaskEnded(task_id)
        tokens = self._tasks.setdefault(task_id, {})
        tokens[jti] = exp
        # The store's own prune counts tasks: one long, busy task (a stateless client's implicit session) kept
        # every token it was ever given. Its record is pruned by itself, amortized like the store's.
        if len(tokens) > self._task_limits.get(task_id, _TASK_FLOOR):
            tokens = self._tasks[task_id] = {j: e for j, e in tokens.items() if e > now}
            self._task_limits[task_id] = max(_TASK_FLOOR, 2 * len(tokens))
        self._maybe_prune(now)

    async def revoke_task(self, task_id: str, *, final: bool = True) -> list[str]:
        now = self._clock()
        if final:
            self._ended[task_id] = now + self._ended_ttl_s
        jtis = self._tasks.pop(task_id, {})
        self._task_limits.pop(task_id, None)
        live = {j: exp for j, exp in jtis.items() if exp > now}
        self._revoked.update(live)
        self._maybe_prune(now)
        return sorted(live)

    async def is_revoked(self, jti: str) -> bool:
        exp = self._revoked.get(jti)
        return exp is not None and exp > self._clock()

    async def is_active(self, task_id: str, jti: str) -> bool:
        # Only what this process recorded and has not revoked: the records die with the process, so a
        # token minted before a restart (revoked at that shutdown, or by now) cannot be vouched for.
        return self._tasks.get(task_id, {}).get(jti, 0) > self._clock()

    async def is_ended(self, task_id: str, *, used_for_s: float | None = None) -> bool:
        return self._ended.get(task_id, 0) > self._clock()

    async def check(self, task_id: str, *, used_for_s: float | None = None) -> TaskState:
        return TaskState(await self.is_ended(task_id), task_id in self._tasks)

    async def used_lately(self, task_id: str) -> bool:
        return False  # one process: its own view of when a task was used is the whole story


# KEYS: task zset, ended marker. ARGV: jti, exp (s), now (s) -> 0 when the task has ended. Expired members go
# (a long, busy task kept every token it was ever given while its key's expiry kept moving on).
_RECORD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[3]))
if ttl < 1 then ttl = 1 end
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: task zset, ended marker. ARGV: now (s), ended ttl (s), revoked-key prefix, final (1|0) -> revoked jtis.
_REVOKE = """
if ARGV[4] == '1' then redis.call('SET', KEYS[2], '1', 'EX', ARGV[2]) end
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #entries, 2 do
  local jti = entries[i]
  local ttl = math.ceil(tonumber(entries[i + 1]) - tonumber(ARGV[1]))
  if ttl < 1 then ttl = 1 end
  redis.call('SET', ARGV[3] .. jti, '1', 'EX', ttl)
  table.insert(out, jti)
end
redis.call('DEL', KEYS[1])
return out
"""


class RedisRevocations:
    """Shared store: `<prefix>cred:task:<id>` (zset jti→exp), `cred:ended:<id>`, `cred:revoked:<jti>`,
    `cred:used:<id>` (a task in use on some replica within `tasks.idle_s`), `cred:epoch`.

    Each key carries a TTL no longer than the tokens it describes (or `ended_ttl_s` for the ended
    marker). Both writes are Lua scripts, so a record racing a revoke cannot slip through.

    A Redis that loses its data (restarted without persistence, FLUSHALL, a failover that lost writes)
    loses the ended markers too, and a task ended before would get credentials again. Two cheap guards:
    the tasks this replica saw end are also remembered here, for as long as their marker lives; and the
    `cred:epoch` key (no TTL, set when missing) is read with every `is_ended`: when it is gone or another
    value, `lost_at` is set, and the task tracker ends every task it knew from before (see tasks.py).
    """

    shared = True

    def __init__(self, client: Any, *, prefix: str = "customs:", ended_ttl_s: float = 3660.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = prefix + "cred:"
        self._ended_ttl_s = int(max(1, ended_ttl_s))
        self._clock = clock
        self._record = client.register_script(_RECORD)
        self._revoke = client.register_script(_REVOKE)
        self._epoch_value = secrets.token_hex(16).encode()  # written only when the store has none
        self._epoch: bytes | None = None  # the store's epoch as this replica last read it
        self.lost_at = -math.inf
        self._good_at = -math.inf  # when the last read that found our epoch was issued
        self._ended_here: dict[str, float] = {}  # task -> until: ends seen here, kept through a data loss
        self._limit = PruneLimit(_PRUNE_FLOOR)

    def _remember_end(self, task_id: str) -> None:
        now = self._clock()
        self._ended_here[task_id] = now + self._ended_ttl_s
        if self._limit.due(len(self._ended_here)):
            self._ended_here = {t: until for t, until in self._ended_here.items() if until > now}
            self._limit.pruned(len(self._ended_here))

    def _ended_locally(self, task_id: str) -> bool:
        return self._ended_here.get(task_id, 0) > self._clock()

    def _note_epoch(self, value: Any, issued: float) -> None:
        """The data was lost after the last read that still found our epoch: a task first seen here before that
        read is from before the loss. (A task first seen later had its own first read find the new data, unless
        it ended here, which `_ended_here` remembers.)"""
        if self._epoch is not None and value != self._epoch:
            self.lost_at = max(self.lost_at, self._good_at)
        else:
            self._good_at = max(self._good_at, issued)
        self._epoch = value

    def _task_keys(self, task_id: str) -> list[str]:
        return [f"{self._prefix}task:{task_id}", f"{self._prefix}ended:{task_id}"]

    async def record(self, task_id: str, jti: str, exp: float) -> None:
        if self._ended_locally(task_id):
            raise TaskEnded(task_id)
        ok = await self._record(keys=self._task_keys(task_id), args=[jti, exp, self._clock()])
        if not int(ok):
            raise TaskEnded(task_id)

    async def revoke_task(self, task_id: str, *, final: bool = True) -> list[str]:
        # Remembered first: if Redis cannot take the end now, this replica already refuses the task's tokens
        # (record, is_ended, is_active) while the task tracker makes the end once Redis answers.
        if final:
            self._remember_end(task_id)
        jtis = await self._revoke(keys=self._task_keys(task_id),
                                  args=[self._clock(), self._ended_ttl_s, f"{self._prefix}revoked:", int(final)])
        return sorted(j.decode() if isinstance(j, bytes) else str(j) for j in jtis)

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._client.exists(f"{self._prefix}revoked:{jti}"))

    async def is_active(self, task_id: str, jti: str) -> bool:
        # The live record, not the absence of a revocation marker: a Redis that lost its data (restarted
        # without persistence, a failover that lost writes) then makes tokens inactive, never active again.
        if self._ended_locally(task_id):  # ended here, perhaps while Redis could not take it
            return False
        score = await self._client.zscore(self._task_keys(task_id)[0], jti)
        return score is not None and float(score) > self._clock()

    async def is_ended(self, task_id: str, *, used_for_s: float | None = None) -> bool:
        return (await self.check(task_id, used_for_s=used_for_s)).ended

    async def check(self, task_id: str, *, used_for_s: float | None = None) -> TaskState:
        if self._ended_locally(task_id):
            return TaskState(True, False)
        epoch, issued = f"{self._prefix}epoch", self._clock()
        task_key, ended_key = self._task_keys(task_id)
        async with self._client.pipeline(transaction=False) as pipe:  # one round trip, as before
            pipe.exists(ended_key)
            pipe.exists(task_key)
            if used_for_s is not None:
                pipe.set(f"{self._prefix}used:{task_id}", b"1", ex=max(1, math.ceil(used_for_s)))
            pipe.set(epoch, self._epoch_value, nx=True)
            pipe.get(epoch)
            results = await pipe.execute()
        self._note_epoch(results[-1], issued)
        if results[0]:
            self._remember_end(task_id)
        return TaskState(bool(results[0]), bool(results[1]))

    async def used_lately(self, task_id: str) -> bool:
        return bool(await self._client.exists(f"{self._prefix}used:{task_id}"))
