"""Fixtures for the approvals tests: real redis-server, stores, a test identifier."""

from __future__ import annotations

from tests.support.redis import redis_factory, redis_server

__all__ = ["redis_factory", "redis_server"]
