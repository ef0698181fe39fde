"""`customs approvals list --all` against the real gateway (memory and Redis stores): calls held through `/mcp`
are all listed, page after page of the API's next_cursor, each once, also with a state filter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.e2e.test_approval_arg_types import POLICIES, Env
from tests.e2e.test_approvals_rules import policy_dir
from tests.support.cli import customs_async
from tests.support.redis import redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, start_gateway: Any, tmp_path: Path,
              redis_factory: Any) -> AsyncIterator[Env]:  # noqa: F811
    issuer = TestIssuer(tmp_path)
    store: Any = "memory" if request.param == "memory" else {"redis": {"url": redis_factory().url}}
    async with run_http_server(payments_server()) as payments:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": payments}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(policy_dir(tmp_path / "policies", POLICIES)), "watch": False},
            "decision_log": {"path": str(tmp_path / "decisions.jsonl")},
            "store": store,
        })
        async with aiohttp.ClientSession() as http:
            yield Env(gw, issuer, http, tmp_path / "decisions.jsonl")


async def test_list_all_walks_every_page_of_the_gateways_listing(env: Env) -> None:
    held = []
    for amount in range(1, 8):
        body = await env.pay({"account": f"A-{amount}", "amount": amount})
        held.append(body["error"]["data"]["approval_id"])
    for approval_id in held[:2]:
        status, _ = await env.api("POST", f"/api/approvals/{approval_id}/deny")
        assert status == 200
    status, first = await env.api("GET", "/api/approvals?state=pending&limit=2")
    assert status == 200 and len(first["items"]) == 2 and isinstance(first["next_cursor"], str)

    code, out, err = await customs_async("approvals", "list", "--all", "--limit", "2", "--state", "all", "--json",
                                         "--url", env.gw.url, token=env.alice())
    assert code == 0, err
    assert [i["id"] for i in json.loads(out)] == held[::-1]
    code, out, err = await customs_async("approvals", "list", "--all", "--limit", "2", "--url", env.gw.url,
                                         token=env.alice())
    assert code == 0 and "--cursor" not in err, err
    assert [row.split()[0] for row in out.splitlines()[1:]] == held[2:][::-1]  # pending, the default
    code, out, err = await customs_async("approvals", "list", "--all", "--state", "denied", "--url", env.gw.url,
                                         token=env.alice())
    assert code == 0 and [row.split()[0] for row in out.splitlines()[1:]] == held[:2][::-1], err
