"""A denied tool answers exactly as a missing one (docs/errors.md, "Denied and unknown look the same"), also while
the task-state store is down. Real gateway, real redis-server killed mid-test, raw JSON-RPC."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.contract import Agent
from tests.support.redis import RedisServer, redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
READER = "spiffe://customs.demo/agent/reader"


def _shape(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The error with the tool's own name taken out of its message: what must not tell the two apart."""
    error = dict(body["error"])
    error["message"] = error["message"].replace(name, "<name>")
    return error


async def test_denied_and_missing_tools_answer_alike_while_the_task_store_is_down(
        start_gateway: Any, tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:  # noqa: F811
    redis_server = redis_factory()
    issuer = TestIssuer(tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies, ignore=shutil.ignore_patterns("tests"))
    async with run_http_server(inventory_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": url, "tools": {"list_skus": {"sensitivity": "restricted"}}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(policies), "watch": False},
            "store": {"redis": {"url": redis_server.url}}})
        agent = await Agent(http, gw.mcp, issuer.mint(READER, aud=gw.mcp, tenant="acme")).open()
        status, listed, _ = await agent.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert status == 200 and "inventory__list_skus" not in str(listed), listed  # restricted: hidden

        async def shapes() -> tuple[dict[str, Any], dict[str, Any]]:
            _, denied, _ = await agent.call("inventory__list_skus", {})
            _, missing, _ = await agent.call("inventory__no_such_tool", {})
            return _shape(denied, "inventory__list_skus"), _shape(missing, "inventory__no_such_tool")

        denied, missing = await shapes()
        assert denied == missing and denied["data"]["reason"] == "unknown_tool", (denied, missing)
        redis_server.kill()
        denied, missing = await shapes()
        assert denied == missing, (denied, missing)
