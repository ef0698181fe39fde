"""The shared-state connection: one Redis client (bounded pool) when `store: {redis: …}` is configured.

Pending approvals, revocations, task facts, pins and rate limits all use this one client. Its
health is part of /readyz; a failure of any operation on it fails the caller closed. At shutdown its
commands are cut off at the drain deadline (`cut_off`), so a Redis that hangs cannot hold the exit up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.config import ConfigError
from gateway.config.model import RedisConfig

log = logging.getLogger("customs.store")

# Redis answered and said no (wrong password or ACL user, DB index out of range, no permission): waiting
# will not help, unlike a Redis that is down or still starting, so these are configuration errors.
REFUSALS = (AuthenticationError, AuthorizationError, ResponseError)
# Connections held for good by pub/sub listeners (approvals' events, tool pins' changes), on top of
# store.redis.max_connections: from the same pool they left `max_connections: 2` none for commands, and every
# call waited the pool's 5 s and was refused.
SUBSCRIBERS = 2
T = TypeVar("T")


class CutOff:
    """The moment (loop time) from which every command on the shared client fails, None until shutdown sets it."""

    def __init__(self) -> None:
        self.at: float | None = None

    async def bound(self, command: Awaitable[T]) -> T:
        """`command`, cancelled at the cut-off: past it, it fails as a command meeting the socket timeout does
        (redis TimeoutError), so every caller's handling of a Redis that hangs applies unchanged."""
        limit = asyncio.timeout_at(self.at)
        try:
            async with limit:
                return await command
        except TimeoutError as exc:
            if limit.expired():
                raise RedisTimeout("cut off at the shutdown's deadline") from exc
            raise


class _Client(aioredis.Redis):
    """The shared client: its commands and pipelines, once `cut_off.at` is set, end by then. Before that a command
    costs one attribute read and one call more (no timer): the calls' own Redis work is not slowed down."""

    def __init__(self, *, cut_off: CutOff | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cut_off = cut_off or CutOff()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.cut_off.at is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await self.cut_off.bound(super().execute_command(*args, **options))  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _Pipeline(self.cut_off, self.connection_pool, self.response_callbacks, transaction, shard_hint)


class _Pipeline(Pipeline):
    def __init__(self, cut_off: CutOff, *args: Any) -> None:
        super().__init__(*args)
        self.cut_off = cut_off

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.cut_off.at is None:
            return await super().execute(raise_on_error)
        return await self.cut_off.bound(super().execute(raise_on_error))


class RedisConnection:
    """Owns the Redis client: created at start-up, closed at shutdown."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        # A blocking pool waits for a free connection instead of failing at once past the limit.
        self.pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=config.max_connections + SUBSCRIBERS, timeout=5, socket_timeout=5,
            socket_connect_timeout=2, health_check_interval=15)
        self.client: Any = _Client(connection_pool=self.pool)

    @property
    def prefix(self) -> str:
        return self.config.key_prefix

    async def start(self) -> None:
        try:
            await self.client.ping()
        except REFUSALS as exc:
            raise ConfigError([f"store.redis.url: redis at {_safe_url(self.config.url)} refused the gateway: "
                               f"{type(exc).__name__}: {exc}"], "store") from exc
        except Exception as exc:  # not fatal: calls needing Redis fail closed until it is back
            log.warning("redis at %s not reachable at start-up: %s", _safe_url(self.config.url), exc)

    def cut_off(self, at: float) -> None:
        """Shutdown: every command (and pipeline) issued from now on ends by `at` (loop time), failing as one that
        met the socket timeout. A Redis that hangs made each of shutdown's own commands (a session's revocation,
        the approvals' holder record) wait the full 5 s, and the exit came seconds past the drain deadline."""
        self.client.cut_off.at = at

    async def close(self) -> None:
        await self.client.aclose()
        await self.pool.aclose()

    async def check(self) -> tuple[bool, str]:
        try:
            await self.client.ping()
            return True, "ok"
        except REFUSALS as exc:
            return False, f"redis refused the gateway: {type(exc).__name__}"
        except Exception as exc:
            return False, f"redis unreachable: {type(exc).__name__}"


def _safe_url(url: str) -> str:
    """The URL without its password, for logs: redis-py reads one from the user info (which may hold an '@': the
    host follows the last one) and from a `password` query parameter (how a unix:// socket gets one)."""
    parts = urlsplit(url)
    _user_info, at, host = parts.netloc.rpartition("@")
    query = [(name, "***" if name.lower() == "password" else value)
             for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = f"***@{host}" if at else host
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{urlencode(query, safe='*')}" if query else "")
