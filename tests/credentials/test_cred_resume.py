"""A call's answer stream resumed (GET + Last-Event-ID) after the call's own token expired: it used to carry that
expired token, so an upstream checking the token on every request refused the resume (401) and the long call
failed though its task was live. The resume now asks the credential stage again for the same call (same scope
and narrowed arguments: a cache hit while the token has its margin left, else a fresh one), and never for a
task that ended meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.credentials.test_cred_replicas_live import Agent
from tests.credentials.upstream import bound_socket

INIT = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "slow", "version": "1"}}
TOOL = {"name": "slow", "description": "answers after a pause", "inputSchema": {
    "type": "object", "properties": {"account": {"type": "string"}}}}
RETRY_MS = 2500  # longer than the call token's life (ttl_s 2: whole seconds, so 1 to 2 s)


@dataclass
class SlowUpstream:
    """Checks each request's token (unexpired); a call's stream ends after a priming event and is answered on
    the resume."""

    url: str = ""
    resumes: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    call_tokens: list[dict[str, Any]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    echo: bool = False  # the resumed answer quotes the Authorization header the resume came with

    def app(self) -> web.Application:
        async def mcp(request: web.Request) -> web.StreamResponse:
            claims = _live_claims(request)
            if request.method == "GET":
                if not request.headers.get("Last-Event-ID"):
                    return web.Response(status=405)
                self.resumes.append((401 if claims is None else 200, claims))
                if claims is None:
                    return web.Response(status=401)
                text = f"done with {request.headers['Authorization']}" if self.echo else "done"
                return await _sse(request, f"id: p-2\ndata: {json.dumps(_answer(self.calls[-1], text))}")
            if request.method == "DELETE":
                return web.Response(status=200)
            if claims is None:
                return web.Response(status=401)
            message = json.loads(await request.read())
            method = message.get("method")
            if method == "initialize":
                return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": INIT},
                                         headers={"Mcp-Session-Id": "s-1"})
            if "id" not in message:
                return web.Response(status=202)
            if method == "tools/list":
                return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": [TOOL]}})
            self.calls.append(message)
            self.call_tokens.append(claims)
            self.called.set()
            return await _sse(request, f"id: p-1\nretry: {RETRY_MS}")

        app = web.Application()
        app.router.add_route("*", "/mcp", mcp)
        return app


def _live_claims(request: web.Request) -> dict[str, Any] | None:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if claims["exp"] > time.time() else None


def _answer(message: dict[str, Any], text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": text}]}}


async def _sse(request: web.Request, event: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write((event + "\n\n").encode())
    await response.write_eof()
    return response


@pytest.fixture
async def upstream() -> AsyncIterator[SlowUpstream]:
    state = SlowUpstream()
    sock = bound_socket()
    runner = web.AppRunner(state.app(), access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    yield state
    await runner.cleanup()


def minted_for(upstream: SlowUpstream, policies: Any, tmp_path: Any) -> dict[str, Any]:
    """A gateway config minting 2 s tokens for the slow upstream."""
    return {"upstreams": [{"name": "slow", "url": upstream.url, "credentials": {"mode": "minted", "ttl_s": 2}}],
            "policies": {"dir": str(policies)}, "signing": {"key_dir": str(tmp_path / "keys")}}


async def test_a_resumed_answer_stream_carries_a_live_credential_for_the_same_call(
        start_gateway, permissive_policies, tmp_path, upstream: SlowUpstream) -> None:
    gw = await start_gateway({
        "upstreams": [{"name": "slow", "url": upstream.url,
                       "credentials": {"mode": "minted", "ttl_s": 2, "narrow_to_args": ["account"]}}],
        "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
    async with aiohttp.ClientSession() as http:
        agent = Agent(http, gw.mcp)
        await agent.open()
        answer = await agent.request("tools/call", {"name": "slow__slow", "arguments": {"account": "acme-1"}})
    assert answer.get("result", {}).get("content") == [{"type": "text", "text": "done"}], answer
    (status, claims), = upstream.resumes
    assert status == 200 and claims is not None
    (call_claims,) = upstream.call_tokens
    assert claims["jti"] != call_claims["jti"]  # a fresh token: the call's own had expired
    for key in ("scope", "args", "task", "aud", "sub"):
        assert claims[key] == call_claims[key], key  # for the same call, narrowed as it was
    assert claims["scope"] == "slow account:acme-1"


async def test_the_renewed_credential_an_upstream_echoes_on_the_resume_is_taken_out(
        start_gateway, permissive_policies, tmp_path, upstream: SlowUpstream) -> None:
    """The answer came on the resumed stream, quoting the token renewed for it: not the token the call was sent with,
    so scrubbing only that one (as before) handed the agent a live token for the upstream."""
    upstream.echo = True
    gw = await start_gateway(minted_for(upstream, permissive_policies, tmp_path))
    async with aiohttp.ClientSession() as http:
        agent = Agent(http, gw.mcp)
        await agent.open()
        answer = await agent.request("tools/call", {"name": "slow__slow", "arguments": {"account": "acme-1"}})
    (status, _), = upstream.resumes
    assert status == 200
    assert answer.get("result", {}).get("content") == [{"type": "text", "text": "done with [REDACTED]"}], answer


async def test_no_resume_for_a_task_ended_while_the_stream_was_down(
        start_gateway, permissive_policies, tmp_path, upstream: SlowUpstream) -> None:
    gw = await start_gateway(minted_for(upstream, permissive_policies, tmp_path))
    async with aiohttp.ClientSession() as http:
        agent = Agent(http, gw.mcp)
        await agent.open()
        pending = asyncio.create_task(agent.request("tools/call", {
            "name": "slow__slow", "arguments": {}, "_meta": {"customs/task": "order-7"}}))
        await asyncio.wait_for(upstream.called.wait(), 10)
        status, _ = await agent.post({"jsonrpc": "2.0", "method": "notifications/customs/task_end",
                                      "params": {"task": "order-7"}})
        assert status == 202
        answer = await asyncio.wait_for(pending, 20)
    assert answer["error"]["data"] == {"reason": "credential_unavailable", "task_ended": True}, answer
    assert upstream.resumes == []  # nothing sent for the ended task, not even with its revoked token
