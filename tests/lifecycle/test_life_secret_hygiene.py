"""Secret hygiene: nothing the gateway writes (process log at debug level, decision log with arguments,
exported spans with captured arguments) contains any secret used in the run.

A real gateway process with JWT identity, one upstream with a static key from the environment and
one with minted credentials, handles allowed, denied and held calls whose arguments carry a fake AWS
key, a GitHub token, a JWT and a private-key PEM block. Then every output is scanned for the agents'
bearer tokens, the static key, every minted token the upstream received, the gateway's signing key
and the fake secrets.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import string
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server, payments_server
from tests.lifecycle.conftest import READER, REPO
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer

UNTRUSTED = "spiffe://customs.demo/agent/untrusted"


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def fake_secrets(issuer: TestIssuer) -> dict[str, str]:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {
        "aws": "AKIA" + _random(string.ascii_uppercase + string.digits, 16),
        "github": "ghp_" + _random(string.ascii_letters + string.digits, 36),
        "jwt": issuer.mint("someone-else", aud="https://elsewhere.test", ttl=600),
        "pem": pem,
    }


def needles(name: str, value: str) -> list[tuple[str, str]]:
    """What must not appear: the value, and for multi-line values (PEM) each long line of it."""
    found = [(name, value)]
    if "\n" in value.strip():
        found += [(f"{name} line", line) for line in value.splitlines() if len(line) >= 40 and "-----" not in line]
    return found


def span_text(otlp: OtlpReceiver) -> str:
    return "\n".join(repr(span) for span in otlp.spans)


def signing_keys(key_dir: Path) -> list[str]:
    pems = [p.read_text() for p in sorted(key_dir.glob("*.pem"))]
    assert pems and all("PRIVATE KEY" in p for p in pems)
    return pems


def minted_tokens(seen: list[SeenRequest]) -> list[str]:
    out = [r.headers["authorization"][7:] for r in seen if r.headers.get("authorization", "").startswith("Bearer ")]
    assert out and all(jwt.decode(t, options={"verify_signature": False})["aud"] for t in out)
    return sorted(set(out))


async def make_calls(url: str, issuer: TestIssuer, fake: dict[str, str]) -> list[str]:
    """Allowed, denied and held calls carrying the fake secrets; returns the agents' bearer tokens."""
    aud = f"{url}/mcp"
    reader = issuer.mint(READER, aud=aud, tenant="acme")
    untrusted = issuer.mint(UNTRUSTED, aud=aud, tenant="acme")
    async with sdk_client(f"{url}/mcp", reader) as client:
        for value in fake.values():  # allowed reads; the upstream echoes the argument back
            assert not (await client.call_tool("inventory__get_stock", {"sku": value})).is_error
        paid = await client.call_tool("payments__pay", {"account": fake["aws"], "amount": 5, "memo": fake["github"]})
        assert not paid.is_error
        outcomes = []
        for name, args in (("inventory__set_stock", {"sku": fake["pem"], "quantity": 1}),          # held
                           ("payments__pay", {"account": "a", "amount": 1, "memo": fake["jwt"],
                                              "__expr": fake["aws"]})):                          # denied
            try:
                await client.call_tool(name, args)
            except MCPError as exc:
                outcomes.append(exc.data["reason"])
        assert outcomes == ["approval_pending", "unknown_tool"]
    async with sdk_client(f"{url}/mcp", untrusted) as client:
        try:
            await client.call_tool("inventory__get_stock", {"sku": fake["github"]})
            raise AssertionError("the untrusted agent was allowed")
        except MCPError as exc:
            assert exc.data["reason"] == "unknown_tool"
    return [reader, untrusted]


async def test_no_secret_reaches_logs_decision_log_or_spans(spawn_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    fake = fake_secrets(issuer)
    static_key = "inv-static-" + secrets.token_urlsafe(24)
    decisions = tmp_path / "decisions.jsonl"
    key_dir = tmp_path / "keys"
    seen_pay: list[SeenRequest] = []
    seen_inv: list[SeenRequest] = []
    async with OtlpReceiver() as otlp, run_http_server(inventory_server(), requests=seen_inv) as inv, \
            run_http_server(payments_server(), requests=seen_pay) as pay:
        gw = await spawn_gateway({
            "upstreams": [
                {"name": "inventory", "url": inv, "credentials": {"mode": "static", "value_env": "INV_KEY"}},
                {"name": "payments", "url": pay, "tools": {"pay": {"sum_args": ["amount"]}},
                 "credentials": {"mode": "minted", "ttl_s": 60}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "approvals": {"wait_s": 0},
            "signing": {"key_dir": str(key_dir)},
            "decision_log": {"path": str(decisions), "include_args": True},
            "telemetry": {"traces": {"endpoint": otlp.url, "capture_args": True}},
        }, env={"INV_KEY": static_key}, args=("--log-level", "debug"))
        bearers = await make_calls(gw.url, issuer, fake)
        gw.proc.send_signal(signal.SIGTERM)  # a clean stop flushes the decision log and the span exporter
        # Waited for in a thread: the OTLP receiver in this event loop must keep answering the last export.
        assert await asyncio.to_thread(gw.proc.wait, 30) == 0, gw.log()

    # The secrets really were in play: the upstreams received them.
    assert any(static_key in v for r in seen_inv for v in r.headers.values())
    minted = minted_tokens(seen_pay)
    outputs = {"process log": gw.log(), "decision log": decisions.read_text(), "spans": span_text(otlp)}
    assert " DEBUG " in outputs["process log"] and "Failed to export" not in outputs["process log"]
    calls = [json.loads(line) for line in outputs["decision log"].splitlines()]
    # (Approval records name the held call's method too since 3146115: the decisions are the type decision ones.)
    decided = [r for r in calls if r.get("type") == "decision" and r.get("method") == "tools/call"]
    assert sorted(r["decision"] for r in decided) == [
        "allow"] * 5 + ["approval_required", "deny", "deny"]
    assert all("args" in r for r in decided)  # arguments were logged (redacted)
    captured = [s for s in otlp.spans if "gen_ai.tool.call.arguments" in s.attributes]
    assert {s.name for s in captured} >= {"tools/call inventory__set_stock", "tools/call payments__pay"}
    assert "[REDACTED]" in outputs["decision log"] and "[REDACTED]" in outputs["spans"]

    secret_list: list[tuple[str, str]] = [("static key", static_key)]
    secret_list += [("agent bearer", b) for b in bearers]
    secret_list += [("minted token", t) for t in minted]
    for pem in signing_keys(key_dir):
        secret_list += needles("signing key", pem)
    for name, value in fake.items():
        secret_list += needles(f"fake {name}", value)
    leaks = [(what, where) for what, value in secret_list for where, text in outputs.items() if value in text]
    assert leaks == [], leaks
