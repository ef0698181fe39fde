"""Every path of the pinned HTTP surface (../shared/interfaces.md, "HTTP surface"), and the tool pins API
(docs/tools-and-limits.md), asked with a method it does not take, and with HEAD, through a real gateway with JWT
identity: 405 with `Allow` (a JSON-RPC error on the MCP paths, docs/errors.md `method_not_allowed`), and HEAD on a
document answers GET's head without its body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.contract import CONTRACT_POLICIES, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer


@dataclass
class Surface:
    url: str
    http: aiohttp.ClientSession
    approver: str  # also in the tool pins administrators' group (pinning.admin_group, default admins)


@pytest.fixture
async def surface(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Surface]:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url,
                                                 "credentials": {"mode": "minted", "ttl_s": 60}}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES))},
                                  "telemetry": {"metrics": {"prometheus": True}}})
        yield Surface(gw.url, http, issuer.mint("alice", aud=gw.mcp, groups=["approvers", "admins"]))


WRONG_METHODS = [  # (method, path, Allow, JSON-RPC error?)
    ("PUT", "/mcp", "DELETE,GET,POST", True), ("PATCH", "/mcp/payments", "DELETE,GET,POST", True),
    ("PUT", "/mcp/nope", "DELETE,GET,POST", True),
    ("POST", "/.well-known/oauth-protected-resource", "GET,HEAD", False),
    ("DELETE", "/.well-known/oauth-protected-resource/mcp/payments", "GET,HEAD", False),
    ("POST", "/.well-known/jwks.json", "GET,HEAD", False),
    ("PUT", "/.well-known/oauth-authorization-server", "GET,HEAD", False),
    ("GET", "/oauth/introspect", "POST", False),
    ("POST", "/approvals", "GET,HEAD", False),
    ("DELETE", "/api/approvals", "GET,HEAD", False),
    ("PUT", "/api/approvals/apr_0", "GET,HEAD", False),
    ("GET", "/api/approvals/apr_0/approve", "POST", False), ("DELETE", "/api/approvals/apr_0/deny", "POST", False),
    ("POST", "/healthz", "GET,HEAD", False), ("POST", "/readyz", "GET,HEAD", False),
    ("POST", "/metrics", "GET,HEAD", False),
    ("DELETE", "/api/tools", "GET,HEAD", False), ("GET", "/api/tools/payments/pay/approve", "POST", False),
]


@pytest.mark.parametrize(("method", "path", "allow", "json_rpc"), WRONG_METHODS)
async def test_a_method_a_path_does_not_take_is_405_with_allow(surface: Surface, method: str, path: str, allow: str,
                                                               json_rpc: bool) -> None:
    headers = {"Authorization": f"Bearer {surface.approver}"}
    async with surface.http.request(method, f"{surface.url}{path}", headers=headers) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == allow, (resp.status, dict(resp.headers))
        if json_rpc:
            body = await resp.json()
            assert body["error"]["data"]["reason"] == "method_not_allowed" and body["id"] is None, body


DOCUMENTS = ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp",
             "/.well-known/oauth-protected-resource/mcp/payments", "/.well-known/jwks.json",
             "/.well-known/oauth-authorization-server", "/approvals", "/api/approvals?state=pending",
             "/api/approvals/apr_0", "/healthz", "/readyz", "/metrics", "/api/tools"]


@pytest.mark.parametrize("path", DOCUMENTS)
async def test_head_answers_as_get_without_the_body(surface: Surface, path: str) -> None:
    """RFC 9110 §9.3.2: HEAD is GET without the content. The RFC 9728 metadata and the tool pins list answered HEAD
    405 (they were registered without it), though the other documents take it."""
    headers = {"Authorization": f"Bearer {surface.approver}"}
    async with surface.http.get(f"{surface.url}{path}", headers=headers) as resp:
        status, content_type = resp.status, resp.content_type
        assert await resp.read()
    async with surface.http.head(f"{surface.url}{path}", headers=headers) as resp:
        assert (resp.status, resp.content_type) == (status, content_type), path
        assert await resp.read() == b""
