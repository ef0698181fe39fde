"""Demo agent for the compose stack: makes demo keys, mints tokens, and walks through four calls.

    python compose/agent.py keys --out /keys            # ES256 key pair + jwks.json (once)
    python compose/agent.py token --subject alice --groups approvers,finance   # an approver token
    python compose/agent.py demo --gateway http://127.0.0.1:8700/mcp --key /keys/signing-key.pem

Each call of the walkthrough starts its own trace (a `traceparent` in `params._meta`) and prints the
Jaeger link, so you can open exactly that trace.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.demo.delegate import KEY_FILE, mint_token, write_demo_keys

JAEGER_UI = "http://localhost:16686"


def new_traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


async def call(gateway: str, token: str, tool: str, args: dict[str, Any], title: str) -> None:
    trace_id, traceparent = new_traceparent()
    print(f"\n== {title}\n   tools/call {tool} {args}")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(30.0, read=90.0)) as http:
        async with Client(streamable_http_client(gateway, http_client=http), mode="legacy") as client:
            try:
                result = await client.call_tool(tool, args, meta={"traceparent": traceparent})  # type: ignore[arg-type]
                text = " ".join(getattr(part, "text", "") for part in result.content)
                print(f"   -> {'tool error: ' if result.is_error else ''}{text}")
            except Exception as exc:  # the gateway's JSON-RPC error (denied, held, …) is the point of the demo
                print(f"   -> refused: {exc}")
    print(f"   trace: {JAEGER_UI}/trace/{trace_id}")


def wait_ready(gateway: str, timeout_s: float = 90.0) -> None:
    """Poll /readyz until the gateway and its upstreams answer (compose starts them in parallel)."""
    url = gateway.rsplit("/mcp", 1)[0] + "/readyz"
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # not up yet (connection refused, or 503 while upstreams start)
        if time.monotonic() > end:
            raise SystemExit(f"gateway not ready at {url} after {timeout_s:.0f}s")
        time.sleep(1)


async def demo(gateway: str, key: Path) -> None:
    agent = mint_token(key, subject="demo-agent", audience=gateway, claims={"tenant": "acme"})
    untrusted = mint_token(key, subject="untrusted-agent", audience=gateway, claims={"tenant": "acme"})
    await call(gateway, agent, "inventory__get_stock", {"sku": "widget"}, "1. allowed: a read-only tool")
    await call(gateway, untrusted, "inventory__get_stock", {"sku": "widget"},
               "2. denied: an untrusted agent (policy untrusted-agents)")
    await call(gateway, agent, "delegate__stock_report", {"sku": "gadget"},
               "3. delegated: restock-agent calls inventory for demo-agent (act claim, one trace)")
    await call(gateway, agent, "payments__pay", {"account": "ACME-001", "amount": 250, "memo": "demo"},
               "4. held: a payment waits for a person (open http://127.0.0.1:8700/approvals)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose/agent.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="create the demo signing key and jwks.json (kept if present)")
    keys.add_argument("--out", type=Path, required=True)
    token = sub.add_parser("token", help="print a demo access token")
    token.add_argument("--key", type=Path, default=Path("/keys") / KEY_FILE)
    token.add_argument("--subject", required=True)
    token.add_argument("--audience", default="http://127.0.0.1:8700/mcp")
    token.add_argument("--tenant", default="acme")
    token.add_argument("--groups", default="", help="comma-separated groups (approvers: approvers,finance)")
    run = sub.add_parser("demo", help="run the four example calls")
    run.add_argument("--gateway", default="http://127.0.0.1:8700/mcp")
    run.add_argument("--key", type=Path, default=Path("/keys") / KEY_FILE)
    args = parser.parse_args(argv)
    if args.command == "keys":
        print(f"demo key: {write_demo_keys(args.out)}")
    elif args.command == "token":
        claims: dict[str, Any] = {"tenant": args.tenant}
        if args.groups:
            claims["groups"] = [g for g in args.groups.split(",") if g]
        print(mint_token(args.key, subject=args.subject, audience=args.audience, claims=claims, ttl_s=3600))
    else:
        wait_ready(args.gateway)
        asyncio.run(demo(args.gateway, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
