"""Shutdown's Redis work shares the drain deadline (gateway/app.py: Gateway.close), without losing what a Redis that
answers takes in milliseconds (a real gateway process, a real redis-server, a real upstream).

The hung-Redis side (the exit within `listen.drain_timeout_s` although every command would wait out the client's 5 s
socket timeout) is `e2e/test_approvals_shutdown_redis_hung.py`; here Redis answers, and a call that runs up to the
deadline leaves shutdown no time before it: the session's credentials are still revoked in Redis, as shutdown.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ANON, RawClient, Recorder, one_shape_policies, poll, reason
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio
DRAIN_S = 1.0
SESSIONS = 40  # ended after the deadline, 16 at a time (sessions.END_CONCURRENCY): more than one loop turn's work


async def test_a_call_running_to_the_drain_deadline_still_has_its_sessions_credentials_revoked_in_redis(
        spawn_gateway: Any, upstream: tuple[Recorder, str], redis_server: RedisServer, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """The slow call holds the drain to its deadline, where it is withdrawn (`shutting_down`); the open sessions end
    after that. Each one's revocation still reaches Redis (its record is written once the store took it): shutdown's
    Redis work gets at least REDIS_CLOSE_MIN_S, not only what is left of the deadline (nothing here)."""
    recorder, url = upstream
    decisions = tmp_path / "decisions.jsonl"
    gw = await spawn_gateway({
        "upstreams": [{"name": "rec", "url": url, "timeout_s": 60, "credentials": {"mode": "minted"}}],
        "identity": ANON, "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
        "store": {"redis": {"url": redis_server.url}}, "signing": {"key_dir": str(tmp_path / "keys")},
        "decision_log": {"path": str(decisions)}, "listen": {"drain_timeout_s": DRAIN_S}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    for _ in range(SESSIONS - 1):
        await RawClient(http, gw.mcp).initialize()
    in_flight = asyncio.create_task(client.call("rec__slow", {}))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    gw.proc.send_signal(signal.SIGTERM)
    status, _, body = await asyncio.wait_for(in_flight, 20)
    assert status == 503 and reason(body) == "shutting_down", body
    await poll(lambda: gw.proc.poll() is not None, timeout=20, what="the process to exit")
    assert gw.proc.returncode == 0, gw.log()
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    revoked = [r for r in records if r.get("type") == "credentials_revoked"]
    assert [r["reason"] for r in revoked] == ["shutdown"] * SESSIONS, (revoked, gw.log())
    assert any(r["count"] for r in revoked), revoked  # the slow call's credential among them
