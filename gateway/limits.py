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
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config.model import LimitRule, LimitsConfig
from gateway.context import NOT_FOUND_ITEM, CallContext
from gateway.errors import GatewayError


class LimitBackend(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> float:
        """Take one token; return 0 when admitted, else seconds until a token is available."""
        ...

    async def acquire(self, key: str, limit: int) -> bool: ...

    async def release(self, key: str) -> None: ...


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

    async def acquire(self, key: str, limit: int) -> bool:
        current = self.counters.get(key, 0)
        if current >= limit:
            return False
        self.counters[key] = current + 1
        return True

    async def release(self, key: str) -> None:
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
tokens = math.min(burst, tokens + (now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
return 1
"""


# A slot whose lease lapsed (a call longer than the lease, a replica that crashed) is gone already: never
# count below zero, or the next callers would get one slot more than the limit.
_RELEASE = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisLimits:
    """Buckets and counters shared by every replica."""

    def __init__(self, redis: Any, prefix: str, lease_s: int = 300) -> None:
        self._redis = redis
        self._prefix = prefix + "limit:"
        self._lease_s = lease_s  # a crashed replica's concurrency slots expire after this
        self._take = redis.register_script(_TAKE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    async def take(self, key: str, rate: float, burst: int) -> float:
        try:
            return float(await self._take(keys=[self._prefix + "rate:" + key], args=[rate, burst]))
        except Exception as exc:
            raise GatewayError("rate_limited", "Rate limiter unavailable; call refused",
                               data={"retry_after_s": 1}, headers={"Retry-After": "1"}) from exc

    async def acquire(self, key: str, limit: int) -> bool:
        try:
            return bool(await self._acquire(keys=[self._prefix + "conc:" + key], args=[limit, self._lease_s]))
        except Exception as exc:
            raise GatewayError("rate_limited", "Rate limiter unavailable; call refused",
                               data={"retry_after_s": 1}, headers={"Retry-After": "1"}) from exc

    async def release(self, key: str) -> None:
        try:
            await self._release(keys=[self._prefix + "conc:" + key])
        except Exception:
            pass  # the lease expiry returns the slot


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
        held: list[str] = []
        try:
            for key, rule in self._rules(ctx):
                if rule.concurrency:
                    if not await self._backend.acquire(key, rule.concurrency):
                        raise _limited(1.0, "concurrency", key)
                    held.append(key)
            yield
        finally:
            for key in held:
                await self._backend.release(key)


def _limited(wait: float, kind: str, key: str) -> GatewayError:
    """`data.limit` names the rule (per_principal | per_tool), as the session caps name theirs; the
    `customs.rate_limited` metric is labelled with it."""
    retry = max(1, math.ceil(wait))
    rule = "per_principal" if key.startswith("p:") else "per_tool"
    return GatewayError("rate_limited", f"Rate limit exceeded ({kind}); retry after {retry}s",
                        data={"limit": rule, "retry_after_s": retry}, headers={"Retry-After": str(retry)})
