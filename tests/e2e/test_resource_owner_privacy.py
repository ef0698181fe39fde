"""Bare resource URIs on `/mcp` with an upstream called with per-principal (minted) credentials: which
upstream lists a URI is learned from each principal's own list, so one principal cannot probe with bare
URIs what another's list holds. A real SDK upstream lists `priv://<sub>` to the token's subject only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import mcp_types as types
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.e2e.resource_support import text
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio


def subject(ctx: Any) -> str:
    """The `sub` of the credential the gateway attached (not verified: this server trusts its network)."""
    token = ctx.request.headers["authorization"].removeprefix("Bearer ")
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def private_server(reads: list[tuple[str, str]]) -> MCPServer[Any]:
    """Lists `priv://<sub>` to each subject; reads any URI (the list is what the gateway routes by)."""
    server: MCPServer[Any] = MCPServer("private")

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(uri=f"priv://{subject(ctx)}", name="mine")])

    async def read(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        reads.append((subject(ctx), str(params.uri)))
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=str(params.uri), text="data")])

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("resources/list", types.PaginatedRequestParams, list_resources)
    lowlevel.add_request_handler("resources/read", types.ReadResourceRequestParams, read)
    return server


@dataclass
class Env:
    mcp: str
    issuer: TestIssuer
    reads: list[tuple[str, str]]

    def token(self, sub: str) -> str:
        return self.issuer.mint(sub, aud=self.mcp)


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    reads: list[tuple[str, str]] = []
    async with run_http_server(private_server(reads)) as url:
        gw = await start_gateway({"upstreams": [{"name": "private", "url": url, "credentials": {"mode": "minted"}}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(permissive_policies)},
                                  "signing": {"key_dir": str(tmp_path / "keys")}})
        yield Env(gw.mcp, issuer, reads)




async def test_a_principal_cannot_reach_a_uri_only_anothers_list_holds(env: Env) -> None:
    async with sdk_client(env.mcp, env.token("alice")) as alice:
        assert text(await alice.read_resource("priv://alice")) == "data"
    async with sdk_client(env.mcp, env.token("bob")) as bob:
        with pytest.raises(MCPError) as info:
            await bob.read_resource("priv://alice")
        assert (info.value.code, info.value.error.message) == (-32002, "Resource not found: priv://alice")
        assert text(await bob.read_resource("priv://bob")) == "data"
    assert env.reads == [("alice", "priv://alice"), ("bob", "priv://bob")]
