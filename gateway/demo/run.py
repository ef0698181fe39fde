"""`customs demo`: the gateway on embedded defaults with the demo servers, demo tokens and a walkthrough.

Starts the bundled inventory and payments servers as stdio children behind the gateway, mints
demo tokens (a normal agent owned by bob, an untrusted agent, approvers alice and bob), prints what an
agent should use, then shows an allowed call, a denied call and a call held for a person. The held
call is released by approving it in the approvers' page, the CLI or — with --exit-after-walkthrough —
by the walkthrough itself (bob, the agent's owner, is refused first: no approving on one's own behalf).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.config import parse_config
from gateway.demo.tokens import demo_agents_registry, demo_identity_config, mint_demo_tokens, print_tokens
from gateway.serve import free_port, run, setup_logging, shipped_policies


def demo_config(directory: Path, port: int) -> dict[str, Any]:
    python = sys.executable
    return {
        "listen": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "upstreams": [
            {"name": "inventory", "command": [python, "-m", "gateway.demo.servers", "inventory"]},
            {"name": "payments", "command": [python, "-m", "gateway.demo.servers", "payments"],
             "tools": {"pay": {"sum_args": ["amount"], "sensitivity": "confidential"}}},
        ],
        "identity": demo_identity_config(directory),
        "agents": demo_agents_registry(),
        "policies": {"dir": str(shipped_policies())},
        "approvals": {"wait_s": 3},
        "decision_log": {"path": str(directory / "decisions.jsonl")},
        "signing": {"key_dir": str(directory / "keys")},
    }


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _call(url: str, token: str, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            try:
                result = await client.call_tool(tool, args)
            except Exception as exc:  # the gateway's JSON-RPC error, shown as the agent sees it
                return False, str(exc)
            return True, " ".join(getattr(c, "text", "") for c in result.content)


async def _pending(base: str, token: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{base}/api/approvals", params={"state": "pending"}) as resp:
            body = await resp.json()
            return list(body.get("items", []))


async def _approve(base: str, token: str, approval_id: str) -> str:
    """The HTTP status of an approve request, with the refusal's reason if any (e.g. `403 self_approval`)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/approvals/{approval_id}/approve",
                             json={"comment": "approved by the demo walkthrough"}) as resp:
            if resp.status == 200:
                return "200"
            body = await resp.json(content_type=None)
            return f"{resp.status} {(body.get('error') or {}).get('reason', '')}".strip()


async def walkthrough(base: str, tokens: dict[str, str], *, approve: bool) -> int:
    mcp = f"{base}/mcp"
    _say("\n== 1. allowed: the shopper reads stock (policy reads-allowed)")
    ok, text = await _call(mcp, tokens["shopper"], "inventory__get_stock", {"sku": "widget"})
    _say(f"   {'OK' if ok else 'ERROR'}: {text}")
    _say("\n== 2. denied: an untrusted agent tries the same read (policy untrusted-agents)")
    ok, text = await _call(mcp, tokens["untrusted"], "inventory__get_stock", {"sku": "widget"})
    _say(f"   {'OK' if ok else 'DENIED'}: {text}")
    _say("\n== 3. held: the shopper pays 12,500 (over the task limit: a person must approve)")
    args = {"account": "acme-supplies", "amount": 12500, "memo": "demo"}
    ok, text = await _call(mcp, tokens["shopper"], "payments__pay", args)
    _say(f"   {'OK' if ok else 'HELD'}: {text}")
    items = [i for i in await _pending(base, tokens["alice"]) if i.get("tool") == "pay"]
    if not items:
        _say("   (no pending item found)")
        return 1
    approval_id = items[0]["id"]
    _say(f"   pending approval {approval_id}: approve it at {base}/approvals (sign in with ALICE_TOKEN;")
    _say("   BOB_TOKEN is refused: bob owns the shopper, and nobody approves a call made on their own behalf)")
    _say(f"   or: customs approvals approve {approval_id} --url {base} --token \"$ALICE_TOKEN\" --comment ok")
    if not approve:
        return 0
    _say("\n== 4. bob, the shopper's owner, may not approve its payment")
    _say(f"   bob's approve → HTTP {await _approve(base, tokens['bob'], approval_id)}")
    _say("\n== 5. alice approves; the agent retries the identical call, which now runs exactly once")
    _say(f"   approve → HTTP {await _approve(base, tokens['alice'], approval_id)}")
    ok, text = await _call(mcp, tokens["shopper"], "payments__pay", args)
    _say(f"   {'OK' if ok else 'ERROR'}: {text}")
    return 0 if ok else 1


def demo_command(args: argparse.Namespace) -> int:
    setup_logging("warning")
    directory: Path = args.dir.resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Tokens and printed URLs name the port, so "any free port" (0) is settled first.
        config = parse_config(demo_config(directory, args.port or free_port("127.0.0.1")))
        base = config.listen.resource_url
        tokens = mint_demo_tokens(directory, f"{base}/mcp")
    except OSError as exc:  # the keys, tokens' key and decision log live there: nothing runs without it
        print(f"customs demo: --dir {args.dir}: cannot use it as the demo's directory ({exc.strerror or exc}: "
              f"{exc.filename or directory})", file=sys.stderr)
        return 2
    outcome: dict[str, int] = {"code": 0}
    stop = asyncio.Event()

    async def ready(url: str) -> None:
        _say(f"\nCustoms demo is running. Agents connect to: {base}/mcp")
        _say(f"Approvers' page: {base}/approvals   Health: {base}/readyz   Metrics: {base}/metrics")
        _say(f"Decision log: {directory / 'decisions.jsonl'}\n\nDemo tokens (valid 1 hour):")
        _say(print_tokens(tokens))
        if args.no_walkthrough:
            return

        async def go() -> None:
            try:
                outcome["code"] = await walkthrough(base, tokens, approve=args.exit_after_walkthrough)
            except Exception as exc:
                _say(f"walkthrough failed: {exc}")
                outcome["code"] = 1
            if args.exit_after_walkthrough:
                stop.set()
            else:
                _say("\nThe gateway keeps running; press Ctrl-C to stop.")

        asyncio.get_running_loop().create_task(go())

    code = asyncio.run(run(config, on_ready=ready, stop=stop))
    return code or outcome["code"]
