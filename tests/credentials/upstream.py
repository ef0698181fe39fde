"""A real MCP SDK upstream that accepts only Customs-minted credentials, checked the way a tool author would.

The verifier fetches the gateway's JWKS over HTTP (refetching on an unknown kid, as after a
rotation), checks issuer, audience and expiry, and optionally asks the gateway's introspection
endpoint. The `pay` tool also checks the token's `scope` (tool and narrowed values) and `args` against the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import jwt
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


@dataclass
class JwksVerifier:
    """An MCP SDK TokenVerifier for tokens minted by Customs."""

    issuer: str
    audience: str
    introspect: bool = False
    rejections: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # the accepted tokens themselves, in the same order
    jwks_fetches: int = 0
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict)

    async def _fetch_jwks(self) -> None:
        async with aiohttp.ClientSession() as http, http.get(f"{self.issuer}/.well-known/jwks.json") as resp:
            body = await resp.json()
        self.jwks_fetches += 1
        self._keys = {k["kid"]: jwt.PyJWK(k) for k in body["keys"]}

    async def _introspect(self, token: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.post(f"{self.issuer}/oauth/introspect",
                                                              data={"token": token}) as resp:
            result: dict[str, Any] = await resp.json()
            return result

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid not in self._keys:
                await self._fetch_jwks()
            key = self._keys.get(kid)
            if key is None:
                self.rejections.append("unknown_kid")
                return None
            claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=self.audience,
                                issuer=self.issuer)
        except jwt.InvalidAudienceError:
            self.rejections.append("audience")
            return None
        except jwt.PyJWTError as exc:
            self.rejections.append(type(exc).__name__)
            return None
        if self.introspect and not (await self._introspect(token)).get("active"):
            self.rejections.append("inactive")
            return None
        self.accepted.append(claims)
        self.tokens.append(token)
        return AccessToken(token=token, client_id=claims["sub"], scopes=claims.get("scope", "").split(),
                           expires_at=claims["exp"], resource=claims["aud"], subject=claims["sub"], claims=claims)


def scope_constraints(scope: list[str]) -> dict[str, Any]:
    """The argument values a scope narrows to, read as docs/credentials.md describes (not the gateway's code):
    `name:value` is a string, `name=<JSON>` any other value, both percent-encoded; bare tokens are tool names."""
    constraints: dict[str, Any] = {}
    for token in scope:
        if ":" in token:
            name, _, value = token.partition(":")
            constraints[unquote(name)] = unquote(value)
        elif "=" in token:
            name, _, value = token.partition("=")
            constraints[unquote(name)] = json.loads(unquote(value))
    return constraints


def guarded_payments(verifier: JwksVerifier) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        "payments", token_verifier=verifier,
        auth=AuthSettings(issuer_url=verifier.issuer, resource_server_url=verifier.audience,
                          validate_token_resource=False))
    executed: list[str] = []

    @server.tool()
    def pay(account: str, amount: int) -> str:
        """Pay `amount` to `account`."""
        token = get_access_token()
        claims = (token.claims or {}) if token else {}
        scope = claims.get("scope", "").split()
        if "pay" not in scope:
            raise ToolError("token does not allow pay")
        call = {"account": account, "amount": amount}
        if any(call.get(name) != value for name, value in scope_constraints(scope).items()):
            raise ToolError("token scope is narrowed to other arguments")
        narrowed = claims.get("args")
        if narrowed is not None and narrowed != {k: {"account": account, "amount": amount}.get(k) for k in narrowed}:
            raise ToolError("token is narrowed to other arguments")
        executed.append(f"{account}:{amount}")
        return f"paid {amount} to {account}"

    @server.tool()
    def executed_calls() -> list[str]:
        """Calls executed so far."""
        return list(executed)

    return server


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve_upstream(server: MCPServer[Any], sock: socket.socket) -> AsyncIterator[None]:
    """Serve `server` over streamable HTTP on the pre-bound socket (uvicorn in this event loop)."""
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not uv.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)  # readiness poll, bounded by the timeout
        yield
    finally:
        uv.should_exit = True
        await task
