"""A Redis password never reaches the gateway's log, wherever the URL holds it.

redis-py reads a password from the URL's query (`?password=…`, the way to give one with a `unix://` socket) as
well as from its user info. The start-up warning for a Redis not reachable yet wrote the first form as given,
and cut the second at its first `@`, so a password holding an `@` was logged from there on.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:{port}/0?password=QuerySecret-71",
    "redis://127.0.0.1:{port}/0?db=0&password=QuerySecret-71",
    "redis://default:ab@QuerySecret-71@127.0.0.1:{port}/0",
])
async def test_the_redis_password_is_not_logged(spawn_gateway: Any, permissive_policies: Path, url: str) -> None:
    port = _closed_port()  # nothing listens: the gateway starts and warns that Redis is not reachable yet
    gw = await spawn_gateway({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
                              "store": {"redis": {"url": url.format(port=port)}},
                              "policies": {"dir": str(permissive_policies)}})
    log = gw.log()
    assert "not reachable at start-up" in log and f"127.0.0.1:{port}" in log, log
    assert "QuerySecret" not in log, log
