"""Fixtures for the policy-lifecycle tests: demo upstreams, a token issuer, copied policies, Redis."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server, payments_server
from tests.support.mcp_client import sdk_client
from tests.support.redis import redis_factory, redis_server
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer

__all__ = ["redis_factory", "redis_server"]

REPO = Path(__file__).resolve().parents[2]
READER = "spiffe://customs.demo/agent/reader"


@dataclass
class Upstreams:
    inventory: str
    payments: str
    payments_seen: list[SeenRequest]


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    """The demo inventory and payments servers (real SDK servers over streamable HTTP)."""
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server()) as inv, run_http_server(payments_server(), requests=seen) as pay:
        yield Upstreams(inv, pay, seen)


@pytest.fixture
def issuer(tmp_path: Path) -> TestIssuer:
    return TestIssuer(tmp_path)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A private copy of the shipped policies (tests may edit it)."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target, ignore=shutil.ignore_patterns("tests"))
    return target


def gateway_config(up: Upstreams, issuer: TestIssuer, policy_dir: Path, /, **extra: Any) -> dict[str, Any]:
    """Both demo upstreams, payments summed per task, JWT identity, held calls answered at once."""
    config: dict[str, Any] = {
        "upstreams": [{"name": "inventory", "url": up.inventory},
                      {"name": "payments", "url": up.payments, "tools": {"pay": {"sum_args": ["amount"]}}}],
        "identity": {"mode": "jwt", "issuers": [issuer.config()]},
        "policies": {"dir": str(policy_dir), "watch": False},
        "approvals": {"wait_s": 0},
    }
    config.update(extra)
    return config


def token(issuer: TestIssuer, gw: Any, sub: str = READER, **kw: Any) -> str:
    kw.setdefault("tenant", "acme")
    kw.setdefault("aud", gw.mcp)
    return issuer.mint(sub, **kw)


async def executed_payments(up: Upstreams) -> list[dict[str, Any]]:
    """What the payments server actually executed, asked directly (not through a gateway)."""
    async with sdk_client(up.payments) as client:
        result = await client.call_tool("executed_calls", {})
    structured = result.structured_content or {}
    items = structured.get("result", structured)
    assert isinstance(items, list), result
    return items


async def reason_of(call: Any) -> tuple[str, dict[str, Any]]:
    """Await a call that must fail with a JSON-RPC error; return (data.reason, data)."""
    try:
        result = await call
    except MCPError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        return str(data.get("reason")), data
    raise AssertionError(f"expected an error, got {result!r}")


async def eventually(predicate: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll an async predicate until true, bounded (for state another task or process owns)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)  # polling interval, bounded by the deadline


async def executed_inventory(up: Upstreams) -> list[str]:
    """What the inventory server actually executed, asked directly."""
    async with sdk_client(up.inventory) as client:
        result = await client.call_tool("executed_calls", {})
    structured = result.structured_content or {}
    items = structured.get("result", structured)
    assert isinstance(items, list), result
    return [str(i) for i in items]
