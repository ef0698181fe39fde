"""tasks.idle_s is a finite number of seconds, at most a year: `.inf` (meant as "tasks never go idle") passed
`config check`, and with `store: {redis: …}` every call naming an explicit task on a minted upstream was then
refused credential_unavailable ("Revocation store unavailable": the task's in-use mark could not be given an
endless TTL), though Redis was up."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.servers import run_http_server

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]
YEAR_S = 31_536_000


@pytest.mark.parametrize("idle", [float("inf"), 1e308, YEAR_S + 1])
def test_an_endless_or_overlong_idle_window_is_a_config_error(idle: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "tasks": {"idle_s": idle}})
    assert [p for p in info.value.problems if p.startswith("tasks.idle_s:")], info.value.problems


async def test_the_longest_idle_window_serves_an_explicit_task_through_redis(start_gateway, permissive_policies,
                                                                           tmp_path, redis_server) -> None:
    async with run_http_server(payments_server()) as upstream_url:
        gateway = await start_gateway({
            "listen": {"public_url": "http://customs.test"},
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "store": {"redis": {"url": redis_server.url}}, "policies": {"dir": str(permissive_policies)},
            "tasks": {"idle_s": YEAR_S}, "signing": {"key_dir": str(tmp_path / "keys")}})
        call = {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": 3},
                "_meta": {"customs/task": "order-42"}}
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gateway.mcp)
            await agent.open()
            answer = await agent.request("tools/call", call)
    assert "result" in answer, answer
