"""A config label on a resource URI template applies to the URIs expanded from it: with the shipped
policies (`restricted-needs-clearance`) a template labelled restricted makes reads of its URIs, and the
listed resources it matches, refused for an agent without clearance and allowed with it, in both views;
a label on the exact URI still wins. Real gateway, real SDK upstream, JWT identities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
AGENT = "spiffe://t.test/agent/reader"
LABELS = {"mem://secret/{id}": {"sensitivity": "restricted"},
          "mem://secret/public": {"sensitivity": "internal"}}  # the exact URI's label wins over its template's


def label_server(reads: list[str]) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("mem")

    @server.resource("mem://secret/{id}")
    def secret(id: str) -> str:
        reads.append(f"mem://secret/{id}")
        return f"secret {id}"

    @server.resource("mem://secret/listed")
    def listed() -> str:  # a static resource the labelled template also matches
        reads.append("mem://secret/listed")
        return "listed"

    @server.resource("mem://secret/public")
    def public() -> str:
        reads.append("mem://secret/public")
        return "public"

    return server


@dataclass
class Env:
    mcp: str
    issuer: TestIssuer
    reads: list[str] = field(default_factory=list)

    def token(self, **claims: Any) -> str:
        return self.issuer.mint(AGENT, aud=self.mcp, tenant="acme", claims=claims or None)


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    reads: list[str] = []
    async with run_http_server(label_server(reads)) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "mem", "url": url, "tools": LABELS}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
        })
        yield Env(gw.mcp, issuer, reads)


def text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


@pytest.mark.parametrize("path", ["", "/mem"], ids=["aggregated", "pass-through"])
async def test_restricted_template_refuses_its_uris_without_clearance(env: Env, path: str) -> None:
    ns = "" if path else "customs://mem/"
    async with sdk_client(env.mcp + path, env.token()) as client:
        for uri in (f"{ns}mem://secret/7", f"{ns}mem://secret/listed"):
            with pytest.raises(MCPError) as info:
                await client.read_resource(uri)
            assert (info.value.code, info.value.error.message) == (-32002, f"Resource not found: {uri}")
        assert [str(r.uri) for r in (await client.list_resources()).resources] == [f"{ns}mem://secret/public"]
        assert (await client.list_resource_templates()).resource_templates == []
        assert text(await client.read_resource(f"{ns}mem://secret/public")) == "public"
    assert env.reads == ["mem://secret/public"]


@pytest.mark.parametrize("path", ["", "/mem"], ids=["aggregated", "pass-through"])
async def test_restricted_template_allows_its_uris_with_clearance(env: Env, path: str) -> None:
    ns = "" if path else "customs://mem/"
    async with sdk_client(env.mcp + path, env.token(clearance="restricted")) as client:
        assert text(await client.read_resource(f"{ns}mem://secret/7")) == "secret 7"
        listed = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        assert listed == [f"{ns}mem://secret/listed", f"{ns}mem://secret/public"]
        assert text(await client.read_resource(f"{ns}mem://secret/listed")) == "listed"
    assert env.reads == ["mem://secret/7", "mem://secret/listed"]
