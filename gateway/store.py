"""The shared-state connection: one Redis client (bounded pool) when `store: {redis: …}` is configured.

Pending approvals, revocations, task facts, pins and rate limits all use this one client. Its
health is part of /readyz; a failure of any operation on it fails the caller closed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

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


class RedisConnection:
    """Owns the Redis client: created at start-up, closed at shutdown."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        # A blocking pool waits for a free connection instead of failing at once past the limit.
        self.pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=config.max_connections + SUBSCRIBERS, timeout=5, socket_timeout=5,
            socket_connect_timeout=2, health_check_interval=15)
        self.client: Any = aioredis.Redis(connection_pool=self.pool)

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
