"""Faults through a real gateway: each fails closed, recovers by itself, and never executes a call twice.

Policy engine errors and broken reloads, Redis killed and restarted under the gateway, a stdio
upstream killed mid-call, hanging upstreams (per-upstream and per-tool timeouts, with the
cancellation reaching the upstream), garbage and resets from an upstream (no automatic retry of a
write), and the circuit breaker seen from /readyz.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.demo.servers import inventory_server, payments_server
from tests.hardening.conftest import ANON, REPO, RawClient, Recorder, one_shape_policies, poll, reason, recording_server
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.support.redis import RedisServer
from tests.support.servers import SeenRequest, run_http_server

pytestmark = pytest.mark.asyncio


async def readyz(http: aiohttp.ClientSession, gw: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.url}/readyz") as resp:
        return resp.status, await resp.json()


async def client_for(http: aiohttp.ClientSession, gw: Any) -> RawClient:
    client = RawClient(http, gw.mcp)
    await client.initialize()
    return client


def policy_dir(tmp_path: Path, text: str) -> Path:
    target = tmp_path / "policies"
    target.mkdir(exist_ok=True)
    (target / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (target / "main.cedar").write_text(text)
    return target


# ---- the policy engine -------------------------------------------------------------------------

OVERFLOW_POLICIES = """
@id("allow-all")
permit (principal, action, resource);

// Errors at evaluation for amounts near the Long limit (overflow): an erroring forbid must still deny.
@id("big-amounts")
forbid (principal, action == Action::"call_tool", resource)
when { context.args has amount && context.args.amount * 1000 > 5000000 };
"""


async def test_policy_evaluation_error_denies_and_is_recorded(start_gateway: Any, tmp_path: Path,
                                                              http: aiohttp.ClientSession) -> None:
    log_path = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(policy_dir(tmp_path, OVERFLOW_POLICIES)), "watch": False},
                                  "decision_log": {"path": str(log_path)}})
        client = await client_for(http, gw)
        status, _, body = await client.call("payments__pay", {"account": "a", "amount": 10})
        assert status == 200 and "result" in body, body
        status, _, body = await client.call("payments__pay", {"account": "a", "amount": 2**62})  # overflow
        assert status == 200 and reason(body) == "unknown_tool", body
        assert "overflow" not in json.dumps(body).lower()  # nothing about policies on the wire
        status, _, body = await client.call("payments__executed_calls", {})
        executed = json.loads(body["result"]["content"][0]["text"])
        assert [e["amount"] for e in (executed if isinstance(executed, list) else [executed])] == [10]
        async with http.get(f"{gw.url}/metrics") as resp:  # the engine fault is counted, not just denied
            counted = [line for line in (await resp.text()).splitlines() if line.startswith("customs_policy_errors")]
        assert len(counted) == 1 and 'gen_ai_tool_name="pay"' in counted[0], counted
        assert float(counted[0].rsplit(" ", 1)[1]) == 1.0
    await gw.gateway.parts.observability.log.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    denied = [r for r in records if r.get("type") == "decision" and r.get("decision") == "deny"]
    assert len(denied) == 1 and denied[0]["policy_errors"], denied
    assert any("overflow" in e for e in denied[0]["policy_errors"])


async def test_broken_reload_keeps_the_last_good_set_and_is_counted(start_gateway: Any, tmp_path: Path,
                                                                    http: aiohttp.ClientSession) -> None:
    policies = policy_dir(tmp_path, '@id("allow-all")\npermit (principal, action, resource);\n')
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(policies), "watch": False}})
        (policies / "broken.cedar").write_text("forbid (principal, action, resource) when { nope };\n")
        assert await gw.gateway.parts.engine.reload() is False
        client = await client_for(http, gw)
        status, _, body = await client.call("payments__balance", {"account": "a"})
        assert status == 200 and "result" in body, body  # the last good set still decides
        status, ready = await readyz(http, gw)
        assert status == 200  # a loaded set keeps the gateway ready; the failure is visible in the detail
        assert ready["checks"]["policies"]["detail"]["reload_failures"] == 1
        assert "broken.cedar" in ready["checks"]["policies"]["detail"]["last_error"]
        async with http.get(f"{gw.url}/metrics") as resp:
            metrics = await resp.text()
        failed = [line for line in metrics.splitlines()
                  if line.startswith("customs_policy_reloads") and 'customs_outcome="error"' in line]
        assert failed and float(failed[0].rsplit(" ", 1)[1]) == 1.0, metrics[:2000]
        (policies / "broken.cedar").unlink()
        assert await gw.gateway.parts.engine.reload() is True
        assert (await readyz(http, gw))[1]["checks"]["policies"]["detail"]["last_error"] is None


# ---- Redis -------------------------------------------------------------------------------------

async def test_redis_killed_and_restarted_under_the_gateway(start_gateway: Any, redis_factory: Any,
                                                            http: aiohttp.ClientSession) -> None:
    redis: RedisServer = redis_factory(appendonly=True)
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}], "identity": ANON,
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis.url}}, "approvals": {"wait_s": 0},
        })
        client = await client_for(http, gw)
        pay = {"account": "acme-1", "amount": 50}
        status, _, body = await client.call("payments__pay", pay)
        assert reason(body) == "approval_pending", body
        approval_id = body["error"]["data"]["approval_id"]

        redis.kill()
        # Every call fails closed: the task facts (read before the decision) are in Redis, so even a
        # read is refused; the held payment cannot be looked up or executed.
        for name, args in (("payments__balance", {"account": "a"}), ("payments__pay", pay)):
            status, _, body = await client.call(name, args)
            assert status == 200 and reason(body) in {"policy_unavailable", "approval_unavailable"}, body
        # docs/approvals.md: the call that would be held is refused before its decision, not approval_unavailable.
        assert reason(body) == "policy_unavailable", body
        assert body["error"]["message"] == "Task state unavailable; call denied", body
        status, ready = await readyz(http, gw)
        assert status == 503 and ready["checks"]["store"]["ready"] is False
        assert "redis unreachable" in ready["checks"]["store"]["detail"]

        redis.start()  # same port and data dir; AOF brings the pending approval back
        await poll(lambda: _ready(http, gw), what="readyz after the Redis restart")
        item = await gw.gateway.parts.approvals.get(approval_id)
        assert item.pending
        await gw.gateway.parts.approvals.decide(approval_id, "alice", "approved", None)
        status, _, body = await client.call("payments__pay", pay)
        assert status == 200 and "result" in body, body
        status, _, body = await client.call("payments__pay", pay)  # the approval was used once
        assert reason(body) == "approval_pending", body
        _, _, body = await client.call("payments__executed_calls", {})
    executed = json.loads(body["result"]["content"][0]["text"])
    assert (executed if isinstance(executed, list) else [executed]) == [{**pay, "memo": ""}]


async def test_rate_limited_calls_fail_closed_while_redis_is_down(start_gateway: Any, redis_server: RedisServer,
                                                                  http: aiohttp.ClientSession) -> None:
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}], "identity": ANON,
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis_server.url}},
            "limits": {"per_principal": {"rate_per_s": 100, "burst": 100}},
        })
        client = await client_for(http, gw)
        assert "result" in (await client.call("payments__balance", {"account": "a"}))[2]
        redis_server.kill()
        status, headers, body = await client.call("payments__balance", {"account": "a"})
        assert reason(body) == "rate_limited", body  # the limiter cannot count: refused, not waved through
        assert status == 429 and body["error"]["data"]["retry_after_s"] >= 1
        assert headers["Retry-After"] == "1"
        redis_server.start()
        await poll(lambda: _ready(http, gw), what="readyz after the Redis restart")
        status, _, body = await client.call("payments__balance", {"account": "a"})
        assert status == 200 and "result" in body, body


async def _ready(http: aiohttp.ClientSession, gw: Any) -> bool:
    return (await readyz(http, gw))[0] == 200


# ---- stdio upstream crash and hang -------------------------------------------------------------

@pytest.fixture
async def features_gw(start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> Any:
    cancel_file = tmp_path / "cancelled.txt"
    gw = await start_gateway({
        "upstreams": [{"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH], "timeout_s": 30,
                       "env": {"FEATURE_CANCEL_FILE": str(cancel_file)},
                       "tools": {"hang": {"timeout_s": 0.5}}},
                      {"name": "slowfeat", "command": [sys.executable, FEATURE_SERVER_PATH], "timeout_s": 2.5,
                       "env": {"FEATURE_CANCEL_FILE": str(cancel_file)}}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False},
    })
    gw.cancel_file = cancel_file
    # slowfeat's 2.5 s also bounds its child's start-up: on a loaded machine a first start can miss it (and is
    # retried), which is not what these tests are about; they begin once both children are up.
    async with aiohttp.ClientSession() as http:
        await poll(lambda: _ready(http, gw), timeout=60, what="both stdio children up")
    return gw


async def test_stdio_child_killed_mid_call_answers_at_once_and_recovers(start_gateway: Any, permissive_policies: Path,
                                                                        http: aiohttp.ClientSession) -> None:
    gw = await start_gateway({"upstreams": [{"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH]}],
                              "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    upstream = gw.gateway.parts.upstreams["feat"]
    client = await client_for(http, gw)
    assert "result" in (await client.call("feat__echo", {"value": "first"}))[2]
    pid = upstream.pid
    in_flight = asyncio.create_task(client.call("feat__hang", {}, request_id=5))
    await poll(lambda: len(upstream._table) > 0, what="the call in flight at the child")
    os.kill(pid, signal.SIGKILL)
    status, _, body = await asyncio.wait_for(in_flight, 15)  # a JSON-RPC error, never a hang
    assert status == 200 and reason(body) == "upstream_unavailable", body
    await poll(lambda: upstream.pid is not None and upstream.pid != pid, timeout=15, what="child restarted")
    status, _, body = await client.call("feat__echo", {"value": "again"})
    assert status == 200 and body["result"]["content"][0]["text"] == "again", body
    _, ready = await readyz(http, gw)
    assert ready["upstreams"]["feat"]["restarts"] >= 1


async def test_per_tool_and_per_upstream_timeouts_cancel_upstream(features_gw: Any,
                                                                   http: aiohttp.ClientSession) -> None:
    client = await client_for(http, features_gw)
    # tools.hang.timeout_s (0.5 s) / the upstream's timeout_s (2.5 s: it also bounds the child's start-up)
    for name in ("feat__hang", "slowfeat__hang"):
        status, _, body = await asyncio.wait_for(client.call(name, {}), 15)
        assert status == 200 and reason(body) == "upstream_timeout", (name, body)
    await poll(lambda: features_gw.cancel_file.exists()
               and features_gw.cancel_file.read_text().count("cancelled") == 2,
               what="notifications/cancelled at both upstreams")
    status, _, body = await client.call("feat__echo", {"value": "still fine"})  # a timeout is not a crash
    assert body["result"]["content"][0]["text"] == "still fine"


# ---- a scripted HTTP upstream: garbage, resets, a dead port ------------------------------------

class Scripted:
    """A minimal streamable-HTTP MCP server whose tools/call answer is scripted; counts receipts."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: list[dict[str, Any]] = []
        self.cookies: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        method = body.get("method")
        if "Cookie" in request.headers:
            self.cookies.append(request.headers["Cookie"])
        if "id" not in body:
            return web.Response(status=202)
        if method == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                      "serverInfo": {"name": "scripted", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result},
                                     headers={"Mcp-Session-Id": "s1", "Set-Cookie": "sid=upstream-secret; Path=/"})
        if method == "tools/list":
            tool = {"name": "transfer", "inputSchema": {"type": "object"},
                    "annotations": {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [tool]}})
        self.calls.append(body)
        if self.mode == "garbage":
            return web.Response(body=b"\x00not json at all{", content_type="application/json")
        if self.mode == "ok":
            content = [{"type": "text", "text": "done"}]
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"content": content}},
                                     headers={"Set-Cookie": "sid=upstream-secret-2; Path=/"})
        if self.mode == "wrong_shape":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": ["not", "an", "object"]})
        assert request.transport is not None
        request.transport.close()  # reset mid-call, after the upstream received the write
        raise ConnectionResetError()


@pytest.fixture
async def scripted(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Scripted, str]]:
    script = Scripted(request.param)
    app = web.Application()
    app.router.add_post("/mcp", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield script, f"http://127.0.0.1:{port}/mcp"
    await runner.cleanup()


@pytest.mark.parametrize(("scripted", "expected"), [("garbage", "upstream_error"), ("wrong_shape", "upstream_error"),
                                                    ("reset", "upstream_unavailable")], indirect=["scripted"])
async def test_a_failed_write_is_answered_once_and_never_retried(start_gateway: Any, permissive_policies: Path,
                                                                 http: aiohttp.ClientSession,
                                                                 scripted: tuple[Scripted, str], expected: str) -> None:
    script, url = scripted
    gw = await start_gateway({"upstreams": [{"name": "bank", "url": url}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    client = await client_for(http, gw)
    status, _, body = await client.call("bank__transfer", {"to": "x", "amount": 5})
    assert status == 200 and reason(body) == expected, body
    assert len(script.calls) == 1  # the write reached the upstream once and was not retried
    params = script.calls[0]["params"]
    assert (params["name"], params["arguments"]) == ("transfer", {"to": "x", "amount": 5})


@pytest.mark.parametrize("scripted", ["ok"], indirect=True)
async def test_upstream_cookies_are_never_sent_back(start_gateway: Any, permissive_policies: Path,
                                                    http: aiohttp.ClientSession,
                                                    scripted: tuple[Scripted, str]) -> None:
    # A cookie one upstream sets must never ride along on a later request (another principal's, or
    # another session's): the gateway's upstream client has no cookie jar. (A host name, not an IP:
    # a default cookie jar ignores cookies from IP addresses, which would hide a regression.)
    script, url = scripted
    url = url.replace("127.0.0.1", "localhost")
    gw = await start_gateway({"upstreams": [{"name": "bank", "url": url}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    for _ in range(2):  # two client sessions → two upstream sessions
        client = await client_for(http, gw)
        for _ in range(2):
            status, _, body = await client.call("bank__transfer", {"amount": 1})
            assert status == 200 and "result" in body, body
    assert len(script.calls) == 4
    assert script.cookies == []


async def test_circuit_breaker_stops_hammering_a_dead_upstream(start_gateway: Any, permissive_policies: Path,
                                                               http: aiohttp.ClientSession) -> None:
    connections = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.transport.abort()  # accept, then drop: every attempt fails as a connection failure

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await start_gateway({"upstreams": [{"name": "dead", "url": f"http://127.0.0.1:{port}/mcp"}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        async with http.post(gw.mcp, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}},
                headers={"Accept": "application/json, text/event-stream"}) as resp:
            sid = resp.headers["Mcp-Session-Id"]
        client = RawClient(http, gw.mcp)
        client.session_id = sid
        reasons = []
        for _ in range(12):
            _, _, body = await client.call("dead__anything", {})
            reasons.append((reason(body), (body["error"].get("data") or {}).get("circuit")))
        assert all(r == "upstream_unavailable" for r, _ in reasons), reasons
        assert reasons[-1][1] == "open"  # fails fast
        # Like every other upstream_* error, it names the upstream (in /mcp the agent cannot tell otherwise).
        assert body["error"]["data"] == {"reason": "upstream_unavailable", "circuit": "open", "upstream": "dead"}, body
        attempts = connections
        assert attempts <= 6, attempts  # 5 failures open the circuit; the rest never dialled
        status, ready = await readyz(http, gw)
        assert status == 503 and "circuit open" in ready["upstreams"]["dead"]["detail"], ready
    finally:
        server.close()
        await server.wait_closed()


async def test_http_upstream_down_at_start_turns_ready_without_any_call(start_gateway: Any,
                                                                        permissive_policies: Path,
                                                                        http: aiohttp.ClientSession) -> None:
    """Down at start, calls open the circuit, the upstream comes up on the same port: /readyz alone
    turns green (within a cooldown, 1 s here, no client call in between), and the next call succeeds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused until the server starts
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    with sock:
        await _down_then_up(start_gateway, permissive_policies, http, sock, url)


async def _down_then_up(start_gateway: Any, permissive_policies: Path, http: aiohttp.ClientSession,
                        sock: socket.socket, url: str) -> None:
    # A 1 s cooldown, not the default 10 s: the probe's trial, not the length of the wait, is the point.
    gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url, "breaker": {"cooldown_s": 1}}],
                              "identity": ANON,
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    client = await client_for(http, gw)
    circuits = []
    for request_id in range(6):
        _, _, body = await client.call("inventory__get_stock", {"sku": "widget"}, request_id=request_id)
        assert reason(body) == "upstream_unavailable", body
        circuits.append((body["error"].get("data") or {}).get("circuit"))
    assert circuits[-1] == "open", circuits
    status, ready = await readyz(http, gw)
    assert status == 503 and "circuit open" in ready["upstreams"]["inventory"]["detail"], ready
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), sock=sock, requests=seen):
        await poll(lambda: _ready(http, gw), timeout=20, what="/readyz green after the upstream came up")
        _, ready = await readyz(http, gw)
        assert ready["upstreams"]["inventory"] == {"ready": True, "detail": "reachable", "restarts": 0}, ready
        assert {r.method for r in seen} == {"HEAD"}, seen  # the probe's trial only: no MCP call in between
        status, _, body = await client.call("inventory__get_stock", {"sku": "widget"}, request_id=99)
        assert status == 200 and body["result"]["content"][0]["text"] == "widget: 42 in stock", body


async def test_per_tool_concurrency_limit_answers_429_with_retry_after(start_gateway: Any, tmp_path: Path,
                                                                        http: aiohttp.ClientSession) -> None:
    recorder = Recorder(release=asyncio.Event())
    async with run_http_server(recording_server(recorder)) as url:
        gw = await start_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(one_shape_policies(tmp_path / "p")), "watch": False},
                                  "limits": {"per_tool": {"concurrency": 1}}})
        client = await client_for(http, gw)
        first = asyncio.create_task(client.call("rec__slow", {}, request_id=1))
        await asyncio.wait_for(recorder.slow_started.wait(), 10)
        status, headers, body = await client.call("rec__slow", {}, request_id=2)
        assert status == 429 and reason(body) == "rate_limited", body
        assert headers["Retry-After"] == str(body["error"]["data"]["retry_after_s"])
        # Another tool has its own slot.
        assert "result" in (await client.call("rec__lookup", {"sku": "widget"}, request_id=3))[2]
        recorder.release.set()  # type: ignore[union-attr]
        assert "result" in (await asyncio.wait_for(first, 10))[2]
        status, _, body = await client.call("rec__slow", {}, request_id=4)  # the slot came back
        assert status == 200 and "result" in body, body
    assert [name for name, _ in recorder.calls] == ["slow", "lookup", "slow"]


async def test_client_cancellation_withdraws_the_call_and_reaches_the_upstream(features_gw: Any,
                                                                               http: aiohttp.ClientSession) -> None:
    """notifications/cancelled from the client: the call answers request_cancelled at once (JSON and SSE
    alike), the upstream is told, and the session keeps working (the withdrawal is not a client disconnect)."""
    client = await client_for(http, features_gw)

    def count(word: str) -> int:
        return features_gw.cancel_file.read_text().count(word) if features_gw.cancel_file.exists() else 0

    for accept in ("application/json", "application/json, text/event-stream"):
        started, cancelled = count("started"), count("cancelled")
        call = asyncio.create_task(client.call("slowfeat__hang", {}, request_id=f"c-{accept}",
                                               headers={"Accept": accept}))
        await poll(lambda n=started + 1: count("started") == n, what="the call running at the upstream")
        status, _, _ = await client.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                          "params": {"requestId": f"c-{accept}", "reason": "test"}})
        assert status == 202
        status, _, body = await asyncio.wait_for(call, 10)
        assert status == 200 and reason(body) == "request_cancelled", body
        await poll(lambda n=cancelled + 1: count("cancelled") == n, what="notifications/cancelled at the upstream")
    status, _, body = await client.call("slowfeat__echo", {"value": "after"}, request_id="after")
    assert status == 200 and body["result"]["content"][0]["text"] == "after", body
