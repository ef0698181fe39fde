"""Session-level upstream traffic carries a credential valid when sent, not the one minted at set-up.

With `ttl_s: 2` the set-up token has expired by the time the agent sends a notification, a call
times out (the gateway cancels it upstream) and the session ends (the gateway DELETEs upstream).
A real SDK upstream records every request's Authorization header and when it arrived; each token
is then verified against the gateway's JWKS and its `exp` compared with that arrival time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.servers import run_asgi
from tests.transport.conftest import eventually

SETUP = {"protocolVersion": "2025-11-25", "capabilities": {},
         "clientInfo": {"name": "refresh-test", "version": "1"}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass(frozen=True)
class Arrival:
    method: str  # HTTP method, or the JSON-RPC method of a POST
    authorization: str | None
    at: float


def recording(app: ASGIApp, arrivals: list[Arrival]) -> ASGIApp:
    """Note each request's JSON-RPC method (the body is read here and handed on unchanged)."""
    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        at = time.time()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body, more = b"", scope["method"] == "POST"
        while more:
            chunk = await receive()
            body, more = body + chunk.get("body", b""), chunk.get("more_body", False)
        method = json.loads(body).get("method", "response") if body else scope["method"]
        arrivals.append(Arrival(method, headers.get("authorization"), at))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if scope["method"] == "POST" and not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)
    return wrapper


def slow_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("slow")

    @server.tool()
    async def hang() -> str:
        """Never answers (until cancelled)."""
        await asyncio.Event().wait()
        return "never"

    return server


async def verified_claims(gateway_url: str, audience: str, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway_url}/.well-known/jwks.json") as resp:
        keys = {k["kid"]: jwt.PyJWK(k) for k in (await resp.json())["keys"]}
    key = keys[jwt.get_unverified_header(token)["kid"]]
    # exp is compared with the arrival time below, not with now (the test outlives the tokens).
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=audience,
                                        issuer=gateway_url, options={"verify_exp": False})
    return claims


async def test_session_traffic_after_setup_token_expired_carries_fresh_credential(
        start_gateway, permissive_policies, tmp_path) -> None:
    arrivals: list[Arrival] = []
    app = slow_server().streamable_http_app(host="127.0.0.1")
    async with run_asgi(recording(app, arrivals)) as base:
        upstream_url = f"{base}/mcp"
        gw = await start_gateway({
            "upstreams": [{"name": "slow", "url": upstream_url, "timeout_s": 1,
                           "credentials": {"mode": "minted", "ttl_s": 2}}],
            "policies": {"dir": str(permissive_policies)},
            "signing": {"key_dir": str(tmp_path / "keys")}})
        endpoint = f"{gw.mcp}/slow"
        async with aiohttp.ClientSession() as http:
            async def post(body: dict[str, Any]) -> aiohttp.ClientResponse:
                async with http.post(endpoint, json=body, headers={**ACCEPT, **session}) as resp:
                    await resp.read()
                    return resp

            session: dict[str, str] = {}
            init = await post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": SETUP})
            session = {"Mcp-Session-Id": init.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
            await post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            await eventually(lambda: any(a.method == "initialize" for a in arrivals))
            setup = next(a for a in arrivals if a.method == "initialize")
            assert setup.authorization is not None
            setup_exp = (await verified_claims(gw.url, upstream_url, setup.authorization.split()[1]))["exp"]
            await eventually(lambda: time.time() > setup_exp + 0.2, within=10)  # the set-up token is dead

            await post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
            await post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "hang"}})
            async with http.delete(endpoint, headers=session) as resp:
                assert resp.status in (200, 204)
            await eventually(lambda: {"notifications/roots/list_changed", "notifications/cancelled", "DELETE"}
                             <= {a.method for a in arrivals})

    late = [a for a in arrivals if a.at > setup_exp]
    assert {"notifications/roots/list_changed", "notifications/cancelled", "DELETE"} <= {a.method for a in late}
    for arrival in arrivals:
        assert arrival.authorization is not None, f"{arrival.method} carried no credential"
        claims = await verified_claims(gw.url, upstream_url, arrival.authorization.split()[1])
        assert claims["exp"] > arrival.at, f"{arrival.method} carried an expired credential"
