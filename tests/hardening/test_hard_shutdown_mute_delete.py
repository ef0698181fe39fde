"""SIGTERM exits within `listen.drain_timeout_s` when an upstream never answers the sessions' DELETEs.

Each upstream session's DELETE waits up to 5 s, sixteen sessions at a time (sessions.END_CONCURRENCY): with many
sessions open on a mute upstream the exit came tens of seconds past the deadline. Shutdown's session ends now give
their upstream closes what is left of it, and their credentials are still revoked. A real gateway process, a real
aiohttp upstream whose DELETE hangs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hardening.conftest import ANON, RawClient
from tests.support.processes import seconds_to_exit_after_sigterm
from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio
DRAIN_S = 2.0
SESSIONS = 40  # ended 16 at a time: three rounds of 5 s DELETE waits on the old code


class MuteDelete:
    """Answers initialize, lists and calls; takes every DELETE and never answers it."""

    def __init__(self) -> None:
        self.deletes = 0
        self.release = asyncio.Event()

    async def post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "id" not in body:
            return web.Response(status=202)
        if body["method"] == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                      "serverInfo": {"name": "mute", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result},
                                     headers={"Mcp-Session-Id": f"s-{id(request)}"})
        if body["method"] == "tools/list":
            tool = {"name": "echo", "inputSchema": {"type": "object"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [tool]}})
        content = [{"type": "text", "text": "ok"}]
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"content": content}})

    async def delete(self, request: web.Request) -> web.StreamResponse:
        self.deletes += 1
        await self.release.wait()
        return web.Response(status=204)

    async def no_stream(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=405)


@pytest.fixture
async def mute() -> AsyncIterator[tuple[MuteDelete, str]]:
    upstream = MuteDelete()
    app = web.Application()
    app.router.add_post("/mcp", upstream.post)
    app.router.add_get("/mcp", upstream.no_stream)
    app.router.add_delete("/mcp", upstream.delete)
    async with run_aiohttp(app, shutdown_timeout=0.1) as base:
        yield upstream, f"{base}/mcp"
        upstream.release.set()


async def test_sigterm_exits_within_the_deadline_although_the_upstream_never_answers_a_delete(
        spawn_gateway: Any, mute: tuple[MuteDelete, str], permissive_policies: Path, tmp_path: Path) -> None:
    upstream, url = mute
    decisions = tmp_path / "decisions.jsonl"
    gw = await spawn_gateway({
        "upstreams": [{"name": "mute", "url": url, "credentials": {"mode": "minted"}}], "identity": ANON,
        "policies": {"dir": str(permissive_policies), "watch": False}, "signing": {"key_dir": str(tmp_path / "keys")},
        "decision_log": {"path": str(decisions)}, "listen": {"drain_timeout_s": DRAIN_S}})
    async with aiohttp.ClientSession() as http:
        async def session_with_a_call() -> None:
            client = RawClient(http, gw.mcp)
            await client.initialize()
            _, _, body = await client.call("mute__echo", {})
            assert body["result"]["content"][0]["text"] == "ok", body
        await asyncio.gather(*(session_with_a_call() for _ in range(SESSIONS)))
    exited_after = await seconds_to_exit_after_sigterm(gw.proc)
    assert gw.proc.returncode == 0, gw.log()
    assert exited_after < DRAIN_S + 0.5, f"exited {exited_after:.1f} s after SIGTERM, drain_timeout_s is {DRAIN_S}"
    assert upstream.deletes > 0  # the DELETEs were sent, only not waited for past the deadline
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    revoked = [r for r in records if r.get("type") == "credentials_revoked"]
    assert [r["reason"] for r in revoked] == ["shutdown"] * SESSIONS, (revoked, gw.log())
