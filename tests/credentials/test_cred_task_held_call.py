"""An explicit task does not go idle under a call still running: one held for approval longer than tasks.idle_s.

The idle sweep counted an explicit task as unused from the start of its last call, so a payment held for a
person longer than idle_s (300 s by default, against approvals.wait_s 840 s) had its task ended under it: once
approved it failed credential_unavailable (task_ended) and never ran. With Redis the other replicas' sweeps
ended it the same way. Now a task's idle time starts when its calls end, as a session's does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from tests.conftest import REPO
from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.redis import RedisServer
from tests.support.servers import SeenRequest, run_http_server

HOLD = '''@id("allow-all")
permit (principal, action, resource);

@id("calls-need-approval")
forbid (principal, action == Action::"call_tool", resource) when { context.approval != "granted" };
'''
PAY = {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": 5}, "_meta": {"customs/task": "order-7"}}


def _policies(tmp_path: Path) -> Path:
    directory = tmp_path / "hold"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (directory / "hold.cedar").write_text(HOLD)
    return directory


def _config(upstream_url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "policies": {"dir": str(_policies(tmp_path))}, "signing": {"key_dir": str(tmp_path / "keys")},
            "tasks": {"idle_s": 0.4}, "approvals": {"wait_s": 30}, **extra}


async def _held_past_idle(gw: Any, agent: Agent) -> dict[str, Any]:
    """Make the call, hold it for three idle windows, approve it, and return its answer."""
    approvals = gw.gateway.parts.approvals
    call = asyncio.create_task(agent.request("tools/call", PAY))
    async with asyncio.timeout(10):
        while not (items := await approvals.list(["pending"])):
            await asyncio.sleep(0.02)  # polling for the held item, bounded
    await asyncio.sleep(1.2)  # the wait under test: three idle windows (the sweep runs every idle_s / 4)
    await approvals.decide(items[0].id, "alice", "approved", "ok")
    return await asyncio.wait_for(call, 10)


async def _inactive(gw: Any, http: aiohttp.ClientSession, token: str) -> None:
    async with asyncio.timeout(10):
        while True:
            async with http.post(f"{gw.url}/oauth/introspect", data={"token": token}) as resp:
                if not (await resp.json())["active"]:
                    return
            await asyncio.sleep(0.05)  # polling the idle sweep, bounded


async def test_a_call_held_past_idle_s_runs_once_approved_and_its_task_idles_after(
        start_gateway: Any, tmp_path: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        gw = await start_gateway(_config(upstream_url, tmp_path))
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp)
            await agent.open()
            answer = await _held_past_idle(gw, agent)
            assert answer.get("result", {}).get("content") == [{"type": "text", "text": "paid 5 to acme-1"}], answer
            token = [s.headers["authorization"][7:] for s in seen if "authorization" in s.headers][-1]
            assert jwt.decode(token, options={"verify_signature": False})["scope"].startswith("pay")
            await _inactive(gw, http, token)  # idle once its call ended: ended, its token revoked


async def test_with_redis_no_other_replica_ends_it_under_the_call(start_gateway: Any, tmp_path: Path,
                                                                  redis_server: RedisServer) -> None:
    async with run_http_server(payments_server()) as upstream_url:
        config = _config(upstream_url, tmp_path, store={"redis": {"url": redis_server.url}})
        a, b = await start_gateway(config), await start_gateway(config)
        async with aiohttp.ClientSession() as http:
            on_a, on_b = Agent(http, a.mcp), Agent(http, b.mcp)
            await on_b.open()
            # B knows the task too (one approved call through it), so B's sweep finds it idle on B.
            first = await _held_past_idle(b, on_b)
            assert "result" in first, first
            await on_a.open()  # (sessions expire after idle_s too: opened when used)
            answer = await _held_past_idle(a, on_a)
            assert answer.get("result", {}).get("content") == [{"type": "text", "text": "paid 5 to acme-1"}], answer


async def test_an_agent_naming_its_task_again_after_an_idle_pause_is_served(start_gateway: Any, tmp_path: Path) -> None:
    """The agent that is told approval_pending and retries once a person approved pauses longer than idle_s (a
    person takes minutes): the idle end refused its task for good (credential_unavailable, task_ended), and the
    retry used up the approval, so a person had to approve the same payment again under a new task. An idle end
    revokes the task's credentials but does not refuse it: the agent naming it again gets new ones."""
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        gw = await start_gateway({**_config(upstream_url, tmp_path), "approvals": {"wait_s": 0}})
        approvals = gw.gateway.parts.approvals
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp)
            await agent.open()
            held = await agent.request("tools/call", PAY)
            assert held["error"]["data"]["reason"] == "approval_pending", held
            await approvals.decide(held["error"]["data"]["approval_id"], "alice", "approved", "ok")
            first = await agent.request("tools/call", PAY)  # (the approval covers this call; a token is minted)
            token = [s.headers["authorization"][7:] for s in seen if "authorization" in s.headers][-1]
            await _inactive(gw, http, token)  # the pause: the task went idle, its credentials were revoked
            await agent.open()  # (sessions expire after idle_s too)
            pay_6 = {**PAY, "arguments": {"account": "acme-1", "amount": 6}}
            again = await agent.request("tools/call", pay_6)
            assert "result" in first, first
            assert again["error"]["data"]["reason"] == "approval_pending", again
            await approvals.decide(again["error"]["data"]["approval_id"], "alice", "approved", "ok")
            paid = await agent.request("tools/call", pay_6)  # the same task, named again: served, not ended
            assert paid.get("result", {}).get("content") == [{"type": "text", "text": "paid 6 to acme-1"}], paid


async def test_after_an_idle_end_no_replica_hands_out_a_token_it_revoked(start_gateway: Any, tmp_path: Path,
                                                                        redis_server: RedisServer) -> None:
    """An idle end writes no end marker (the agent may go on), so the marker no longer told the other replicas to
    drop the tokens they had cached for the task: one handed the revoked token to the upstream (refused there as
    inactive). A task whose record is gone from the store has nothing cached worth reusing."""
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        config = {**_config(upstream_url, tmp_path, store={"redis": {"url": redis_server.url}}),
                  "policies": {"dir": str(_allow_all(tmp_path))}, "tasks": {"idle_s": 300}}
        a, b = await start_gateway(config), await start_gateway(config)
        async with aiohttp.ClientSession() as http:
            on_a, on_b = Agent(http, a.mcp), Agent(http, b.mcp)
            await on_a.open()
            await on_b.open()
            for agent in (on_a, on_b, on_b):
                assert "result" in await agent.request("tools/call", PAY)
            cached = _tokens(seen)[-1]
            [task] = {jwt.decode(t, options={"verify_signature": False})["task"] for t in _tokens(seen)}
            await a.gateway.parts.credentials.tasks.end_task(task, "idle_timeout")  # as A's sweep does
            assert "result" in await on_b.request("tools/call", PAY)
            sent = _tokens(seen)[-1]
            assert sent != cached
            async with http.post(f"{b.url}/oauth/introspect", data={"token": sent}) as resp:
                assert (await resp.json())["active"]


def _allow_all(tmp_path: Path) -> Path:
    directory = tmp_path / "allow"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (directory / "allow.cedar").write_text('@id("allow-all")\npermit (principal, action, resource);\n')
    return directory


def _tokens(seen: list[SeenRequest]) -> list[str]:
    """The minted tokens the upstream received with a `pay` call, in order."""
    tokens = [s.headers["authorization"][7:] for s in seen if "authorization" in s.headers]
    return [t for t in tokens if jwt.decode(t, options={"verify_signature": False})["scope"].startswith("pay")]
