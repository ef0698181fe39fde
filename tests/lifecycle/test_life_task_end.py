"""Explicit task end: `notifications/customs/task_end` revokes what was minted for that task, only that
task and only the sender's own; the upstream's introspection then says inactive."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.lifecycle.conftest import Upstreams, token
from tests.support.tokens import TestIssuer

HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Agent:
    """A raw JSON-RPC client with one MCP session (legacy handshake)."""

    def __init__(self, http: aiohttp.ClientSession, gw: Any, bearer: str) -> None:
        self.http, self.gw = http, gw
        self.headers = {**HEADERS, "Authorization": f"Bearer {bearer}"}
        self.next_id = 1

    async def start(self) -> Agent:
        async with self.http.post(self.gw.mcp, json=INIT, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            self.headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        assert await self.notify("notifications/initialized") == 202
        return self

    async def pay(self, task: str, amount: int = 5) -> dict[str, Any]:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                "params": {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": amount},
                           "_meta": {"customs/task": task}}}
        async with self.http.post(self.gw.mcp, json=body, headers=self.headers) as resp:
            answer: dict[str, Any] = await resp.json()
            return answer

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> int:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body["params"] = params
        async with self.http.post(self.gw.mcp, json=body, headers=self.headers) as resp:
            return resp.status


def pay_tokens(up: Upstreams) -> dict[str, str]:
    """task claim -> the minted token the payments server received with a `pay` call (the latest)."""
    found: dict[str, str] = {}
    for seen in up.payments_seen:
        value = seen.headers.get("authorization", "")
        if not value.startswith("Bearer "):
            continue
        claims = jwt.decode(value[7:], options={"verify_signature": False})
        if claims.get("scope") == "pay":
            found[claims["task"]] = value[7:]
    return found


async def active(http: aiohttp.ClientSession, gw: Any, minted: str) -> bool:
    async with http.post(f"{gw.url}/oauth/introspect", data={"token": minted}) as resp:
        assert resp.status == 200
        return bool((await resp.json())["active"])


@pytest.fixture
async def minted_gateway(start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, permissive_policies: Path,
                         tmp_path: Path) -> Any:
    return await start_gateway({
        "upstreams": [{"name": "payments", "url": upstreams.payments, "credentials": {"mode": "minted"}}],
        "identity": {"mode": "jwt", "issuers": [issuer.config()]},
        "policies": {"dir": str(permissive_policies), "watch": False},
        "signing": {"key_dir": str(tmp_path / "keys")},
        "decision_log": {"path": str(tmp_path / "decisions.jsonl")},
    })


async def test_task_end_revokes_only_that_tasks_credentials(minted_gateway: Any, upstreams: Upstreams,
                                                            issuer: TestIssuer, tmp_path: Path) -> None:
    gw = minted_gateway
    async with aiohttp.ClientSession() as http:
        agent = await Agent(http, gw, token(issuer, gw)).start()
        other = await Agent(http, gw, token(issuer, gw, "spiffe://customs.demo/agent/other")).start()
        for task in ("t-1", "t-2"):
            assert "result" in await agent.pay(task)
        minted = pay_tokens(upstreams)
        assert len(minted) == 2
        t1, t2 = (next(v for k, v in minted.items() if k.startswith(f"{t}@")) for t in ("t-1", "t-2"))
        assert await active(http, gw, t1) and await active(http, gw, t2)

        # Another agent naming the same task ends its own (empty) task, not this agent's.
        assert await other.notify("notifications/customs/task_end", {"task": "t-1"}) == 202
        assert await active(http, gw, t1)

        assert await agent.notify("notifications/customs/task_end", {"task": "t-1"}) == 202
        assert not await active(http, gw, t1)
        assert await active(http, gw, t2)  # the other task of the same agent goes on
        assert "result" in await agent.pay("t-2")

        # The name of an ended task cannot be used again for new credentials.
        again = await agent.pay("t-1")
        assert again["error"]["data"]["reason"] == "credential_unavailable"
    await gw.gateway.parts.observability.log.close()
    events = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    revoked = [e for e in events if e.get("type") == "credentials_revoked" and e.get("reason") == "explicit"]
    assert [e["count"] for e in revoked] == [0, 1]
    assert revoked[1]["task_id"].startswith("t-1@")
    # the decision log's one time format (UTC, milliseconds, Z), like every other record
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in revoked)


async def test_task_end_without_a_task_is_refused(minted_gateway: Any, issuer: TestIssuer) -> None:
    gw = minted_gateway
    async with aiohttp.ClientSession() as http:
        agent = await Agent(http, gw, token(issuer, gw)).start()
        for params in (None, {}, {"task": ""}, {"task": 7}, {"task": "x" * 129}):
            assert await agent.notify("notifications/customs/task_end", params) == 400, params


async def test_a_malformed_task_id_on_a_call_is_refused(minted_gateway: Any, upstreams: Upstreams,
                                                        issuer: TestIssuer) -> None:
    """A `customs/task` that is no task id is refused (as `task_end` refuses it), not silently replaced by the
    session's task: the call would be counted and credentialed under a task the agent did not name."""
    gw = minted_gateway
    async with aiohttp.ClientSession() as http:
        agent = await Agent(http, gw, token(issuer, gw)).start()
        for bad in (7, "", "x" * 129, "a\nb", {"id": "t-1"}, True):
            answer = await agent.pay(bad)  # type: ignore[arg-type]
            assert answer["error"]["data"]["reason"] == "invalid_request", (bad, answer)  # as task_end's
            assert "customs/task" in answer["error"]["message"]
        assert pay_tokens(upstreams) == {}  # none of them reached the upstream
        assert "result" in await agent.pay("x" * 128)  # the longest id that is one
