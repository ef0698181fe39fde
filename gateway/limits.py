"""Rate and concurrency limits per principal and per tool, in memory or shared through Redis.

A token bucket per key gives the rate (`rate_per_s`, `burst`); a counter per key gives the
concurrency. Exceeding either answers `rate_limited` (HTTP 429 semantics) with a retry hint in
`data.retry_after_s`. With Redis the buckets and counters are shared by every replica; a Redis
failure fails closed (the call is refused), like every other shared-state failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config.model import Config, LimitRule, LimitsConfig
from gateway.context import NOT_FOUND_ITEM, CallContext
from gateway.errors import GatewayError


class LimitBackend(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> float:
        """Take one token; return 0 when admitted, else seconds until a token is available."""
        ...

    async def acquire(self, key: str, limit: int) -> str | None:
        """Take a concurrency slot; return its id when admitted, else None."""
        ...

    async def release(self, key: str, slot: str = "") -> None: ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    rate: float
    burst: int


@dataclass
class MemoryLimits:
    """Single-process buckets and counters.

    A bucket that has refilled to its burst is the same as no bucket (a new one starts full), so the sweep
    drops those: without it every principal and tool ever seen (one per SPIFFE id, one per resource URI
    read) kept a bucket for the process' life. A counter goes when its last slot is released.
    """

    buckets: dict[str, _Bucket] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    sweep_s: float = 60.0  # a bucket outlives its last use by at most its refill time plus this
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False)

    async def take(self, key: str, rate: float, burst: int) -> float:
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(float(burst), now, rate, burst)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def sweep(self) -> int:
        """Drop the buckets that have refilled to their burst; returns how many went."""
        now = self.clock()
        full = [key for key, b in self.buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for key in full:
            del self.buckets[key]
        return len(full)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="customs-limits-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        # One pass every sweep_s over the dict, not a check per call: take() stays as it was.
        while True:
            await asyncio.sleep(self.sweep_s)  # periodic timer; close() cancels it
            self.sweep()

    async def acquire(self, key: str, limit: int) -> str | None:
        current = self.counters.get(key, 0)
        if current >= limit:
            return None
        self.counters[key] = current + 1
        return key

    async def release(self, key: str, slot: str = "") -> None:
        current = self.counters.get(key, 0) - 1
        if current <= 0:
            self.counters.pop(key, None)
        else:
            self.counters[key] = current


def sweep_interval(config: LimitsConfig) -> float:
    """How often the in-memory buckets are swept: the longest refill (burst / rate) of the configured
    rules, so an idle bucket lives at most about twice that, kept within 1 s (no busy loop for fast
    rules) and 60 s (slow rules: a bucket may then outlive its refill by up to a minute)."""
    refills = [burst(r) / r.rate_per_s for r in (config.per_principal, config.per_tool) if r.rate_per_s]
    return min(60.0, max(1.0, *refills)) if refills else 60.0


SLOT_LEASE_S = 300.0  # the shortest lease of a Redis concurrency slot
LEASE_MARGIN_S = 60.0  # beyond the longest call, for the answer's way back and the release
MAX_LEASE_S = 7 * 86400.0  # a timeout of years still gets a lease Redis can keep


def slot_lease_s(config: Config) -> float:
    """How long a Redis concurrency slot is leased: 300 s, or longer than the longest call a configured timeout
    allows. A fixed 300 s let a slot lapse under a call still running (`timeout_s: 600`), and a second call took
    it: `concurrency: 1` let two run at once."""
    timeouts = [u.timeout_s for u in config.upstreams]
    timeouts += [t.timeout_s for u in config.upstreams for t in u.tools.values() if t.timeout_s is not None]
    return min(MAX_LEASE_S, max(SLOT_LEASE_S, max(timeouts, default=0.0) + LEASE_MARGIN_S))


def burst(rule: LimitRule) -> int:
    """The rule's bucket size: its burst, else its rate (at least 1)."""
    return rule.burst or max(1, int(rule.rate_per_s or 0))


# Token bucket in one round trip: tokens and timestamp in a hash, refilled from Redis' own clock.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(v[1]) or burst
local stamp = tonumber(v[2]) or now
-- A stamp ahead of now (Redis' clock stepped back: a failover, an NTP correction) refills nothing, and takes
-- nothing either: a negative refill refused the principal for as long as the clock had stepped back.
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

# Concurrency slots: one member per slot in a sorted set, scored with the end of its own lease (ms, Redis'
# clock). A slot whose release never came (a replica killed mid-call, Redis down when the call ended) lapses
# on its own. A single counter with one expiry, renewed by every call, never lapsed while calls kept coming:
# each lost release cost a slot for good.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
RELEASE_RETRY_S = 1.0  # a release Redis could not take is tried again this often, until the slot's lease ends


class RedisLimits:
    """Buckets and concurrency slots shared by every replica."""

    def __init__(self, redis: Any, prefix: str, lease_s: float = 300) -> None:
        self._redis = redis
        self._prefix = prefix + "limit:"
        self._lease_s = lease_s  # a slot whose release never came (a crashed replica) lapses after this
        self._take = redis.register_script(_TAKE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._retries: set[asyncio.Task[None]] = set()

    async def take(self, key: str, rate: float, burst: int) -> float:
        try:
            return float(await self._take(keys=[self._prefix + "rate:" + key], args=[rate, burst]))
        except Exception as exc:
            raise _unavailable() from exc

    async def acquire(self, key: str, limit: int) -> str | None:
        slot = uuid.uuid4().hex
        try:
            admitted = await self._acquire(keys=[self._prefix + "slots:" + key],
                                           args=[limit, math.ceil(self._lease_s * 1000), slot])
        except Exception as exc:
            raise _unavailable() from exc
        return slot if admitted else None

    async def release(self, key: str, slot: str = "") -> None:
        """Give the slot back; while Redis cannot take that (down, restarting) it is tried again in the
        background until it is taken or its lease has ended, so the slot is free soon after Redis is back."""
        try:
            await self._redis.zrem(self._prefix + "slots:" + key, slot)
        except Exception:
            task = asyncio.create_task(self._retry_release(key, slot), name="customs-limits-release")
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry_release(self, key: str, slot: str) -> None:
        deadline = time.monotonic() + self._lease_s
        while time.monotonic() < deadline:
            await asyncio.sleep(RELEASE_RETRY_S)  # a retry period while Redis is away, not synchronisation
            with contextlib.suppress(Exception):
                await self._redis.zrem(self._prefix + "slots:" + key, slot)
                return

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)


def _unavailable() -> GatewayError:
    return GatewayError("rate_limited", "Rate limiter unavailable; call refused",
                        data={"retry_after_s": 1}, headers={"Retry-After": "1"})


class Limiter:
    """Admits a call under every configured rule, holding concurrency slots until it finishes."""

    def __init__(self, config: LimitsConfig, backend: LimitBackend) -> None:
        self._config = config
        self._backend = backend
        rules = (config.per_principal, config.per_tool)
        # Unlimited (the default) must cost nothing per call: no keys built, no generator entered.
        self._any_rate = any(r.rate_per_s for r in rules)
        self._any_concurrency = any(r.concurrency for r in rules)

    def _rules(self, ctx: CallContext) -> list[tuple[str, LimitRule]]:
        if ctx.tool is not None:
            tool = ctx.tool.cedar_id
        else:  # a name nothing has: the key a tool of that name would have, so it is limited like a denied one
            tool = f"{ctx.upstream or ''}/{ctx.extra.get(NOT_FOUND_ITEM, '')}"
        return [(f"p:{ctx.principal.key}", self._config.per_principal), (f"t:{tool}", self._config.per_tool)]

    async def rate(self, ctx: CallContext) -> None:
        """Take a token from every bucket the call falls under (before authorization, so denied
        floods are limited too)."""
        if not self._any_rate:
            return
        for key, rule in self._rules(ctx):
            if rule.rate_per_s:
                wait = await self._backend.take(key, rule.rate_per_s, burst(rule))
                if wait > 0:
                    raise _limited(wait, "rate", key)

    def concurrency(self, ctx: CallContext) -> AbstractAsyncContextManager[None]:
        """Hold a slot per rule while the call executes upstream (not while it waits for approval)."""
        return self._hold(ctx) if self._any_concurrency else nullcontext()

    @asynccontextmanager
    async def _hold(self, ctx: CallContext) -> AsyncIterator[None]:
        held: list[tuple[str, str]] = []
        try:
            for key, rule in self._rules(ctx):
                if rule.concurrency:
                    slot = await self._backend.acquire(key, rule.concurrency)
                    if slot is None:
                        raise _limited(1.0, "concurrency", key)
                    held.append((key, slot))
            yield
        finally:
            for key, slot in held:
                await self._backend.release(key, slot)


def _limited(wait: float, kind: str, key: str) -> GatewayError:
    """`data.limit` names the rule (per_principal | per_tool), as the session caps name theirs; the
    `customs.rate_limited` metric is labelled with it."""
    retry = max(1, math.ceil(wait))
    rule = "per_principal" if key.startswith("p:") else "per_tool"
    return GatewayError("rate_limited", f"Rate limit exceeded ({kind}); retry after {retry}s",
                        data={"limit": rule, "retry_after_s": retry}, headers={"Retry-After": str(retry)})
