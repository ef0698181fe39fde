"""Fixtures of the core tests: Redis, a client session, and a gateway in front of the demo inventory server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.redis import redis_factory, redis_server  # noqa: F401
from tests.support.servers import run_http_server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[Any]:
    """A gateway with one upstream, `inventory` (a test module's own `gw` takes its place)."""
    async with run_http_server(inventory_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                   "policies": {"dir": str(permissive_policies)}})
