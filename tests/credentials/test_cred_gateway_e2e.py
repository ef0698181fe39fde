"""End to end through a real gateway: the upstream sees only the minted credential, never the agent's header."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import jwt

from tests.credentials.helpers import payments_server
from tests.credentials.upstream import JwksVerifier, bound_socket, guarded_payments, serve_upstream
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server


async def test_gateway_attaches_minted_credential_only(start_gateway, permissive_policies, tmp_path) -> None:
    up_sock = bound_socket()
    upstream_url = f"http://127.0.0.1:{up_sock.getsockname()[1]}/mcp"
    verifier = JwksVerifier(issuer="http://gateway.pending", audience=upstream_url, introspect=True)
    async with serve_upstream(guarded_payments(verifier), up_sock):
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url,
                           "credentials": {"mode": "minted", "narrow_to_args": ["account"]}}],
            "policies": {"dir": str(permissive_policies)},
            "signing": {"key_dir": str(tmp_path / "keys")}})
        verifier.issuer = gw.url
        # The agent's own bearer value must never reach the upstream (anonymous identity ignores it here):
        # had it been forwarded, the verifier would have refused it and the call would have failed.
        async with sdk_client(gw.mcp, headers={"Authorization": "Bearer agent-own-token",
                                               "Cookie": "sid=agent"}) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 3})
            assert not result.is_error, result
        # Session set-up (initialize, tools/list) carries a task-bound token with no tool scope; the call
        # itself carries one narrowed to the tool and the account it touches.
        (claims,) = [c for c in verifier.accepted if c.get("scope") == "pay account:acme-1"]
        assert all(c["scope"] in ("", "pay account:acme-1") for c in verifier.accepted)
        assert all(c["iss"] == gw.url and c["aud"] == upstream_url for c in verifier.accepted)
        assert claims["iss"] == gw.url and claims["aud"] == upstream_url and claims["args"] == {"account": "acme-1"}
        assert verifier.rejections == []


async def test_one_second_ttl_is_minted_and_expires(start_gateway, permissive_policies, tmp_path) -> None:
    """`ttl_s: 1` is valid config: calls get a token living at most a second (it used to be refused as if the
    task had ended), and introspection turns inactive once it has expired."""
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted", "ttl_s": 1}}],
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        async with sdk_client(gw.mcp) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 3})
            assert not result.is_error, result
        tokens = [s.headers["authorization"].removeprefix("Bearer ") for s in seen if "authorization" in s.headers]
        claims = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
        (call_token,) = [t for t, c in zip(tokens, claims, strict=True) if c["scope"] == "pay"]
        assert all(0 < c["exp"] - c["iat"] <= 1 for c in claims)
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                async with http.post(f"{gw.url}/oauth/introspect", data={"token": call_token}) as resp:
                    if (await resp.json()) == {"active": False}:
                        break
                assert asyncio.get_running_loop().time() < deadline, "a 1 s token still active after 5 s"
                await asyncio.sleep(0.1)  # polling the token's expiry, bounded by the deadline


async def test_shutdown_revokes_open_sessions_credentials_as_shutdown(start_gateway, permissive_policies,
                                                                      tmp_path) -> None:
    """A session still open when the gateway stops ends because of the shutdown, not a DELETE or an expiry:
    its credentials_revoked record says reason shutdown (it said session_end), as an explicit task's does."""
    from tests.credentials.test_cred_replicas_live import Agent

    seen: list[SeenRequest] = []
    log_path = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")},
            "decision_log": {"path": str(log_path)}})
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp)
            await agent.open()
            answer = await agent.request("tools/call", {"name": "payments__pay",
                                                        "arguments": {"account": "acme-1", "amount": 3}})
            assert "error" not in answer, answer
        call_jti = next(jwt.decode(s.headers["authorization"][7:], options={"verify_signature": False})["jti"]
                        for s in seen if s.method == "POST" and "authorization" in s.headers)
        await gw.runner.cleanup()  # the shutdown (SIGTERM's path), the agent's session still open
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    revoked = [r for r in records if r.get("type") == "credentials_revoked"]
    assert revoked and all(r["reason"] == "shutdown" for r in revoked), revoked
    assert call_jti in {j for r in revoked for j in r["jtis"]}
