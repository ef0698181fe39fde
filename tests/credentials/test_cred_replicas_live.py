"""Two real gateways on one redis-server: a task ended through one replica is over on the other one too."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.credentials.helpers import payments_server
from tests.support.servers import SeenRequest, run_http_server

ACCEPT = "application/json, text/event-stream"


class Agent:
    """A bare streamable-HTTP client of one gateway endpoint: one session, raw JSON-RPC."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.session_id, self.ids = http, url, "", 0

    async def post(self, message: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        headers = {"Accept": ACCEPT, "MCP-Protocol-Version": "2025-06-18"}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        async with self.http.post(self.url, json=message, headers=headers) as resp:
            self.session_id = resp.headers.get("Mcp-Session-Id", self.session_id)
            text = await resp.text()
        data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        body = data[-1] if data else text
        return resp.status, json.loads(body) if body.strip() else None

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        status, body = await self.post({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        assert status == 200 and body is not None, (status, body)
        return body

    async def open(self) -> None:
        await self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                          "clientInfo": {"name": "agent", "version": "1"}})
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})


async def test_task_ended_on_one_replica_is_refused_by_the_other(start_gateway, permissive_policies, tmp_path,
                                                                 redis_server) -> None:
    """The other replica had a cached token for the task: it used to keep forwarding calls with that revoked
    token. Now it answers credential_unavailable (task_ended) and sends the upstream nothing."""
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        config = {"listen": {"public_url": "http://customs.test"},
                  "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
                  "store": {"redis": {"url": redis_server.url}}, "policies": {"dir": str(permissive_policies)},
                  "signing": {"key_dir": str(tmp_path / "keys")}}
        a, b = await start_gateway(config), await start_gateway(config)
        call = {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": 3},
                "_meta": {"customs/task": "order-42"}}
        async with aiohttp.ClientSession() as http:
            on_a, on_b = Agent(http, a.mcp), Agent(http, b.mcp)
            await on_a.open()
            await on_b.open()
            for agent in (on_a, on_b):
                assert "result" in await agent.request("tools/call", call)
            status, _ = await on_a.post({"jsonrpc": "2.0", "method": "notifications/customs/task_end",
                                         "params": {"task": "order-42"}})
            assert status == 202
            before = len(seen)
            answer = await on_b.request("tools/call", call)
        assert answer["error"]["data"] == {"reason": "credential_unavailable", "task_ended": True}
        assert [s for s in seen[before:] if s.method == "POST"] == []


async def test_revocation_event_of_a_session_without_calls_names_its_principal(start_gateway, permissive_policies,
                                                                               tmp_path) -> None:
    """Only the session's set-up requests carried credentials: the `credentials_revoked` event at its DELETE
    used to say `"principal": null`."""
    log_path = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream_url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")},
            "decision_log": {"path": str(log_path)}})
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, f"{gw.url}/mcp/payments")
            await agent.open()  # the pass-through endpoint opens the upstream session with a minted token
            async with http.delete(agent.url, headers={"Mcp-Session-Id": agent.session_id,
                                                       "MCP-Protocol-Version": "2025-06-18"}) as resp:
                assert resp.status in (200, 204)
        assert await gw.gateway.parts.observability.log.flush()  # written by the decision-log writer process
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    (revoked,) = [e for e in events if e.get("type") == "credentials_revoked"]
    assert revoked["reason"] == "session_end" and revoked["count"] >= 1
    assert isinstance(revoked["principal"], str) and revoked["principal"]


async def test_task_end_through_a_replica_that_never_served_the_task_names_its_principal(
        redis_server, start_gateway, permissive_policies, tmp_path) -> None:
    """The agent's calls went through A and its task_end through B (or it ended a task before any call): B did
    not know the task, and its `credentials_revoked` record said `"principal": null` though the task's owner is
    the agent that ended it (an agent can only end its own tasks)."""
    async with run_http_server(payments_server()) as upstream_url:
        config = {"listen": {"public_url": "http://customs.test"},
                  "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
                  "store": {"redis": {"url": redis_server.url}}, "policies": {"dir": str(permissive_policies)},
                  "signing": {"key_dir": str(tmp_path / "keys")}}
        a = await start_gateway({**config, "decision_log": {"path": str(tmp_path / "a.jsonl")}})
        b = await start_gateway({**config, "decision_log": {"path": str(tmp_path / "b.jsonl")}})
        call = {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": 3},
                "_meta": {"customs/task": "order-42"}}
        async with aiohttp.ClientSession() as http:
            on_a, on_b = Agent(http, a.mcp), Agent(http, b.mcp)
            await on_a.open()
            await on_b.open()
            assert "result" in await on_a.request("tools/call", call)
            status, _ = await on_b.post({"jsonrpc": "2.0", "method": "notifications/customs/task_end",
                                         "params": {"task": "order-42"}})
            assert status == 202
        for replica in (a, b):  # both records are written by each replica's decision-log writer process
            assert await replica.gateway.parts.observability.log.flush()
        decided = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    (call_record,) = [r for r in decided if r.get("type") == "decision"]
    events = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    (revoked,) = [e for e in events if e.get("type") == "credentials_revoked" and e["reason"] == "explicit"]
    assert revoked["task_id"] == call_record["task_id"] and revoked["count"] == 1
    assert revoked["principal"] == "anonymous|anonymous"
