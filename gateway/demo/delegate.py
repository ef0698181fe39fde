"""Demo delegate agent: an MCP server whose tool calls back through the gateway on another agent's behalf.

`stock_report(sku)` asks the gateway for `inventory__get_stock` with a token that carries an RFC 8693
`act` claim (sub = the agent it works for, act.sub = this agent), and forwards the W3C trace context
it received in `params._meta`, so the whole delegation chain is one trace in Jaeger.

    python -m gateway.demo.delegate --http 9003 --gateway http://127.0.0.1:8700/mcp --key keys/signing-key.pem

Also holds the demo key helpers (`write_demo_keys`, `mint_token`) shared with compose/agent.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

DEMO_ISSUER = "https://idp.customs.demo"
DEMO_KID = "customs-demo-1"
KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
TRACE_KEYS = ("traceparent", "tracestate", "baggage")


def write_demo_keys(directory: Path) -> Path:
    """Create an ES256 key pair (PEM private key + jwks.json) once; an existing pair is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = directory / KEY_FILE, directory / JWKS_FILE
    if key_path.exists() and jwks_path.exists():
        return key_path
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid=DEMO_KID, use="sig", alg="ES256")
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2))
    return key_path


def mint_token(key_path: Path, *, subject: str, audience: str, issuer: str = DEMO_ISSUER,
               claims: dict[str, Any] | None = None, act: dict[str, Any] | None = None, ttl_s: int = 900) -> str:
    """A demo access token signed with the demo key (ES256, kid DEMO_KID)."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + ttl_s,
                               "jti": uuid.uuid4().hex, **(claims or {})}
    if act is not None:
        payload["act"] = act
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": DEMO_KID})  # type: ignore[arg-type]


def trace_meta(meta: Any) -> dict[str, str]:
    """The W3C trace keys of an inbound `_meta` (to forward unchanged on the delegated call)."""
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if k in TRACE_KEYS and isinstance(v, str)}


def delegate_server(gateway_url: str, key_path: Path, *, on_behalf_of: str = "demo-agent",
                    actor: str = "restock-agent", tenant: str = "acme",
                    audience: str | None = None) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("delegate",
                                       instructions="An agent that asks other tools, through the gateway, for you.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    async def stock_report(sku: str, ctx: Context) -> str:
        """Report the stock level of one SKU, asking on your behalf as a delegate."""
        token = mint_token(key_path, subject=on_behalf_of, audience=audience or gateway_url,
                           claims={"tenant": tenant}, act={"sub": actor, "tenant": tenant}, ttl_s=120)
        meta = trace_meta(ctx.request_context.meta)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      timeout=httpx2.Timeout(30.0, read=60.0)) as http:
            async with Client(streamable_http_client(gateway_url, http_client=http), mode="legacy") as client:
                result = await client.call_tool("inventory__get_stock", {"sku": sku},
                                                meta=meta or None)  # type: ignore[arg-type]
        text = " ".join(getattr(part, "text", "") for part in result.content)
        if result.is_error:
            return f"{actor} could not get the stock of {sku}: {text}"
        return f"{actor} (for {on_behalf_of}) reports: {text}"

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.delegate", description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=9003, metavar="PORT", help="serve on 127.0.0.1:PORT/mcp")
    parser.add_argument("--gateway", default="http://127.0.0.1:8700/mcp", help="the gateway's MCP URL")
    parser.add_argument("--key", type=Path, required=True, help="PEM key that signs the delegated token")
    parser.add_argument("--audience", help="token audience (default: the gateway URL)")
    parser.add_argument("--on-behalf-of", default="demo-agent")
    parser.add_argument("--actor", default="restock-agent")
    parser.add_argument("--tenant", default="acme")
    args = parser.parse_args(argv)
    server = delegate_server(args.gateway, args.key, on_behalf_of=args.on_behalf_of, actor=args.actor,
                             tenant=args.tenant, audience=args.audience)
    server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main(sys.argv[1:])
