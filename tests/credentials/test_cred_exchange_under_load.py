"""Token exchange traffic while the gateway has many calls in flight: it must not wait behind the upstream calls.

The exchange and its RFC 7009 revocations were sent from the gateway's shared HTTP client, whose pool (100
connections) every upstream call draws from. With 100 slow tool calls in flight a task's end queued the
revocation of its exchanged token behind them: it timed out (10 s, three attempts) and the token stayed valid at
the authorization server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from tests.credentials.authz_server import TokenEndpoint
from tests.credentials.helpers import payments_server
from tests.identity.test_jwks_url_under_load import calls_in_flight, holding_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

SHOPPER = "spiffe://acme.test/agent/shopper"


async def test_a_task_end_revokes_at_the_server_while_the_upstream_pool_is_busy(
        start_gateway: Callable[[dict[str, Any]], Awaitable[Any]], permissive_policies: Path, tmp_path: Path,
        endpoint: TokenEndpoint) -> None:
    endpoint.close_connections = True  # no kept-alive connection to reuse: each request opens one, as in production
    idp = TestIssuer(tmp_path, algorithms=("ES256",))
    started: list[int] = []
    release = asyncio.Event()
    async with run_http_server(holding_server(started, release)) as slow, run_http_server(payments_server()) as crm:
        gw = await start_gateway({
            "upstreams": [{"name": "slow", "url": slow},
                          {"name": "crm", "url": crm, "credentials": {
                              "mode": "token_exchange", "token_endpoint": endpoint.url, "client_id": "customs",
                              "client_secret": "s3cret", "revocation_endpoint": endpoint.revocation_url}}],
            "identity": {"mode": "jwt", "issuers": [idp.config()]},
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        token = idp.mint(SHOPPER, aud=gw.mcp, alg="ES256", tenant="acme")
        async with sdk_client(gw.mcp, token) as client:
            result = await client.call_tool("crm__pay", {"account": "a-1", "amount": 1}, meta={"customs/task": "t1"})
            assert not result.is_error, result
        # One exchange for the session's set-up requests, one for the call's task t1. The session's ended with the
        # client (its DELETE): its token's revocation comes first.
        tasks = [jwt.decode(r["form"]["actor_token"], options={"verify_signature": False})["task"]
                 for r in endpoint.requests]
        assert [task.startswith("t1@") for task in tasks].count(True) == 1 and len(tasks) == 2, tasks
        t1_token = f"exchanged-{[task.startswith('t1@') for task in tasks].index(True) + 1}"
        session_revoked = await asyncio.wait_for(endpoint.revocations.get(), 5)
        assert session_revoked["form"]["token"] != t1_token and endpoint.revocations.empty()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
                calls_in_flight(http, gw.mcp, token, started, release) as headers:
            end = {"jsonrpc": "2.0", "method": "notifications/customs/task_end", "params": {"task": "t1"}}
            async with http.post(gw.mcp, json=end, headers=headers) as resp:
                assert resp.status == 202
            revoked = await asyncio.wait_for(endpoint.revocations.get(), 5)  # the AS's timeout is 10 s
            assert revoked["form"]["token"] == t1_token
            assert len(started) == 100  # still held: the pool was full all along
