"""The demo delegate agent: calls back with an `act` token and forwards the caller's trace context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
from mcp.server.mcpserver import Context, MCPServer

from gateway.demo.delegate import DEMO_ISSUER, delegate_server, mint_token, write_demo_keys
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"


def fake_gateway(seen_meta: list[Any]) -> MCPServer[Any]:
    """Where the delegate calls back: records the `_meta` of each call (headers are recorded by the server)."""
    server: MCPServer[Any] = MCPServer("gateway-stand-in")

    @server.tool(name="inventory__get_stock")
    async def get_stock(sku: str, ctx: Context) -> str:
        seen_meta.append(dict(ctx.request_context.meta or {}))
        return f"{sku}: 42 in stock"

    return server


async def test_delegate_calls_back_with_act_claim_and_trace_context(tmp_path: Path) -> None:
    key = write_demo_keys(tmp_path / "keys")
    jwks = json.loads((tmp_path / "keys" / "jwks.json").read_text())
    assert write_demo_keys(tmp_path / "keys") == key  # kept, not regenerated
    assert json.loads((tmp_path / "keys" / "jwks.json").read_text()) == jwks
    seen_meta: list[Any] = []
    requests: list[SeenRequest] = []
    async with run_http_server(fake_gateway(seen_meta), requests=requests) as gateway_url:
        delegate = delegate_server(gateway_url, key, on_behalf_of="demo-agent", actor="restock-agent")
        async with run_http_server(delegate) as delegate_url, sdk_client(delegate_url) as client:
            result = await client.call_tool("stock_report", {"sku": "widget"},
                                            meta={"traceparent": TRACEPARENT, "tracestate": "rojo=1"})
    assert not result.is_error
    assert "restock-agent (for demo-agent) reports: widget: 42 in stock" in result.content[0].text  # type: ignore[union-attr]
    assert seen_meta[-1]["traceparent"] == TRACEPARENT and seen_meta[-1]["tracestate"] == "rojo=1"
    auth = next(r.headers["authorization"] for r in requests if "authorization" in r.headers)
    public = jwt.PyJWKSet.from_dict(jwks).keys[0]
    claims = jwt.decode(auth.removeprefix("Bearer "), public.key, algorithms=["ES256"], audience=gateway_url,
                        issuer=DEMO_ISSUER)
    assert claims["sub"] == "demo-agent" and claims["act"] == {"sub": "restock-agent", "tenant": "acme"}
    assert claims["exp"] > claims["iat"]
    assert jwt.get_unverified_header(auth.removeprefix("Bearer "))["kid"] == public.key_id


def test_mint_token_round_trips(tmp_path: Path) -> None:
    key = write_demo_keys(tmp_path)
    token = mint_token(key, subject="alice", audience="http://127.0.0.1:8700/mcp", claims={"groups": ["approvers"]})
    public = jwt.PyJWKSet.from_dict(json.loads((tmp_path / "jwks.json").read_text())).keys[0]
    claims = jwt.decode(token, public.key, algorithms=["ES256"], audience="http://127.0.0.1:8700/mcp")
    assert claims["groups"] == ["approvers"] and "act" not in claims
