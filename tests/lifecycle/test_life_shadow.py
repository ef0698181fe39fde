"""Shadow mode through a real gateway: a stricter shadow set never changes what happens, but every
disagreement shows in the decision log, in /metrics and on the call's spans."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from tests.lifecycle.conftest import Upstreams, eventually, executed_payments, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.tokens import TestIssuer

STRICTER = '''
@id("shadow-no-payments")
forbid (principal, action == Action::"call_tool", resource in Server::"payments");
'''
METRIC = "customs_shadow_disagreements_total"


def shadow_dir(policies: Path, tmp_path: Path) -> Path:
    target = tmp_path / "shadow"
    shutil.copytree(policies, target)
    (target / "stricter.cedar").write_text(STRICTER)
    return target


def disagreements(metrics_text: str) -> dict[tuple[str, str, str], float]:
    """(tool, decision, shadow decision) -> count, from the Prometheus exposition."""
    out: dict[tuple[str, str, str], float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(METRIC + "{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        key = (labels["gen_ai_tool_name"], labels["customs_decision"], labels["customs_shadow_decision"])
        out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def test_shadow_disagreements_are_visible_but_never_enforced(start_gateway: Any, upstreams: Upstreams,
                                                                   issuer: TestIssuer, policies: Path,
                                                                   tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    async with OtlpReceiver() as otlp:
        gw = await start_gateway(gateway_config(
            upstreams, issuer, policies,
            policies={"dir": str(policies), "shadow_dir": str(shadow_dir(policies, tmp_path)), "watch": False},
            decision_log={"path": str(log_path)}, telemetry={"traces": {"endpoint": otlp.url}}))
        async with sdk_client(gw.mcp, token(issuer, gw)) as client:
            assert (await client.call_tool("inventory__get_stock", {"sku": "widget"})).content  # agree: allow
            assert not (await client.call_tool("payments__balance", {"account": "acme-1"})).is_error
            assert not (await client.call_tool("payments__pay", {"account": "acme-1", "amount": 50})).is_error
            reason, _ = await reason_of(client.call_tool("payments__pay", {"account": "acme-1", "amount": 20000}))
            assert reason == "approval_pending"  # enforced outcome, although the shadow set denies it
        assert [p["amount"] for p in await executed_payments(upstreams)] == [50]

        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
            counted = disagreements(await resp.text())
        assert counted == {("balance", "allow", "deny"): 1, ("pay", "allow", "deny"): 1,
                           ("pay", "approval_required", "deny"): 1}

        server = await otlp.wait_for_span(lambda s: s.name == "tools/call payments__balance"
                                          and "customs.shadow_decision" in s.attributes)
        assert server.attributes["customs.decision"] == "allow"
        assert server.attributes["customs.shadow_decision"] == "deny"
        agreed = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock"
                                          and "customs.decision" in s.attributes)
        assert agreed.attributes["customs.shadow_decision"] == "allow"
        authorize = [s for s in otlp.trace(server.trace_id) if s.name == "customs.authorize"]
        assert [s.attributes["customs.shadow_decision"] for s in authorize] == ["deny"]

        status = gw.gateway.parts.engine.status()["shadow"]
        assert status["disagreements"] == 3 and status["error"] is None
        await gw.gateway.parts.observability.log.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    calls = [(r["tool"], r["decision"], r.get("shadow_decision"), r["outcome"]) for r in records
             if r.get("type") == "decision" and r.get("method") == "tools/call"]
    assert calls == [("get_stock", "allow", "allow", "ok"), ("balance", "allow", "deny", "ok"),
                     ("pay", "allow", "deny", "ok"), ("pay", "approval_required", "deny", "error")]


async def test_broken_shadow_set_never_blocks_enforcement(start_gateway: Any, upstreams: Upstreams,
                                                          issuer: TestIssuer, policies: Path, tmp_path: Path) -> None:
    shadow = shadow_dir(policies, tmp_path)
    gw = await start_gateway(gateway_config(
        upstreams, issuer, policies, policies={"dir": str(policies), "shadow_dir": str(shadow), "watch": False}))
    (shadow / "broken.cedar").write_text("permit(principal, action, resource) when { nonsense };\n")
    engine = gw.gateway.parts.engine
    await engine.reload()
    assert engine.status()["shadow"]["error"]
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", {"account": "acme-1", "amount": 70})).is_error
    assert [p["amount"] for p in await executed_payments(upstreams)] == [70]
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/readyz") as resp:
        assert resp.status == 200
        shadow = (await resp.json())["checks"]["policies"]["detail"]["shadow"]
    assert shadow["error"] and shadow["version"]  # reported; the last good shadow set stays


async def test_a_shadow_set_broken_at_start_decides_nothing_until_it_loads(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path, tmp_path: Path) -> None:
    """The gateway starts on its enforced set; records carry no shadow_decision (there is no shadow decision to
    compare), /readyz names the error, and once the shadow set is fixed and reloaded records carry it again."""
    shadow = shadow_dir(policies, tmp_path)
    (shadow / "broken.cedar").write_text("permit(principal, action, resource) when { nonsense };\n")
    log_path = tmp_path / "decisions.jsonl"
    gw = await start_gateway(gateway_config(
        upstreams, issuer, policies, policies={"dir": str(policies), "shadow_dir": str(shadow), "watch": False},
        decision_log={"path": str(log_path)}))
    engine = gw.gateway.parts.engine
    assert engine.status()["shadow"]["error"] and engine.status()["shadow"]["version"] is None
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", {"account": "acme-1", "amount": 70})).is_error
        (shadow / "broken.cedar").unlink()
        await engine.reload()
        assert engine.status()["shadow"]["version"] and not engine.status()["shadow"]["error"]
        assert not (await client.call_tool("payments__pay", {"account": "acme-1", "amount": 80})).is_error
    await gw.gateway.parts.observability.log.close()
    pays = [r for r in map(json.loads, log_path.read_text().splitlines())
            if r.get("type") == "decision" and r.get("tool") == "pay"]
    assert [(r["decision"], r.get("shadow_decision")) for r in pays] == [("allow", None), ("allow", "deny")]


async def test_readyz_counts_each_recorded_disagreement_once(start_gateway: Any, upstreams: Upstreams,
                                                             issuer: TestIssuer, policies: Path,
                                                             tmp_path: Path) -> None:
    """/readyz's count was bumped by every Cedar evaluation the engine made for a call: the decision on a
    tool's labels before its upstream's list was known (then decided again on the real ones), and the
    re-check of a released call. One held, approved call counted 3 while the metric and the log said 1."""
    shadow = shadow_dir(policies, tmp_path)
    (shadow / "freeze.cedar").write_text(
        '@id("freeze")\nforbid (principal, action == Action::"call_tool", resource == Tool::"inventory/set_stock");\n')
    log_path = tmp_path / "decisions.jsonl"
    gw = await start_gateway(gateway_config(
        upstreams, issuer, policies,
        policies={"dir": str(policies), "shadow_dir": str(shadow), "watch": False},
        decision_log={"path": str(log_path)}, approvals={"wait_s": 60, "keepalive_s": 1}))
    approvals = gw.gateway.parts.approvals
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        # The first call of each upstream: decided before and after its tool list is known.
        waiting = asyncio.create_task(client.call_tool("inventory__set_stock", {"sku": "a", "quantity": 3}))

        async def held() -> bool:
            return bool(await approvals.list(["pending"]))

        await eventually(held)
        [item] = await approvals.list(["pending"])
        await approvals.decide(item.id, "alice", "approved", "ok")
        assert not (await asyncio.wait_for(waiting, 30)).is_error  # released: re-checked, and ran
        assert not (await client.call_tool("payments__pay", {"account": "acme-1", "amount": 50})).is_error
        assert (await client.call_tool("inventory__get_stock", {"sku": "a"})).content  # agree
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        counted = disagreements(await resp.text())
    assert counted == {("set_stock", "approval_required", "deny"): 1, ("pay", "allow", "deny"): 1}
    await gw.gateway.parts.observability.log.close()
    records = [r for r in map(json.loads, log_path.read_text().splitlines()) if r.get("type") == "decision"]
    assert sum(r.get("shadow_decision") not in (None, r["decision"]) for r in records) == 2
    assert gw.gateway.parts.engine.status()["shadow"]["disagreements"] == 2
