"""Replay through a real gateway's decision log: `customs policy replay` names exactly the decisions a
policy change flips, grouped by policy, with exit codes 0 (none changed), 1 (some changed), 2 (bad input)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.conftest import REPO, Upstreams, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.tokens import TestIssuer

UNTRUSTED = "spiffe://customs.demo/agent/untrusted"
NO_WIDGETS = '''
@id("no-widget-lookups")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has sku && context.args.sku == "widget" };
'''


def replay(log: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "policy", "replay", "--log", str(log),
                           "--policies", str(policies)], capture_output=True, text=True, cwd=REPO, timeout=60)


def changed_policies(policies: Path, tmp_path: Path) -> Path:
    """Payments lose their per-task allowance; widget lookups (an argument) become forbidden."""
    target = tmp_path / "changed"
    shutil.copytree(policies, target)
    tools = target / "tools.cedar"
    text = tools.read_text()
    start = text.index('@id("task-payments-under-limit")')
    tools.write_text(text[:start] + text[start:].split("};", 1)[1])
    (target / "widgets.cedar").write_text(NO_WIDGETS)
    return target


def groups(stdout: str) -> dict[str, list[str]]:
    """The printed report as {policy: [change lines without the line number]}."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("  line "):
            current.append(line.split(": ", 1)[1])
        elif line.endswith(" changed") and ": " in line:
            current = out.setdefault(line.split(": ", 1)[0], [])
    return out


async def record_calls(start_gateway: Any, up: Upstreams, issuer: TestIssuer, policies: Path, log: Path,
                       include_args: bool) -> None:
    """A known mix of calls: allowed, denied, held; then stop the gateway (the log is flushed)."""
    gw = await start_gateway(gateway_config(up, issuer, policies,
                                            decision_log={"path": str(log), "include_args": include_args}))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert (await client.call_tool("inventory__get_stock", {"sku": "widget"})).content      # allow
        assert (await client.call_tool("inventory__get_stock", {"sku": "gadget"})).content      # allow
        assert not (await client.call_tool("payments__pay", {"account": "a", "amount": 50})).is_error  # allow
        reason, _ = await reason_of(client.call_tool("inventory__set_stock", {"sku": "gizmo", "quantity": 3}))
        assert reason == "approval_pending"                                                      # held
        reason, _ = await reason_of(client.call_tool("payments__pay", {"account": "a", "amount": 9, "__expr": 1}))
        assert reason == "unknown_tool"                                                          # deny (truncated)
    async with sdk_client(gw.mcp, token(issuer, gw, UNTRUSTED)) as untrusted:
        reason, _ = await reason_of(untrusted.call_tool("inventory__get_stock", {"sku": "widget"}))
        assert reason == "unknown_tool"                                                          # deny (untrusted)
    await gw.runner.cleanup()  # stop the gateway: the decision log is drained and closed


@pytest.mark.parametrize("include_args", [True, False], ids=["with-args", "without-args"])
async def test_replay_names_exactly_the_flipped_decisions(start_gateway: Any, upstreams: Upstreams,
                                                          issuer: TestIssuer, policies: Path, tmp_path: Path,
                                                          include_args: bool) -> None:
    log = tmp_path / "decisions.jsonl"
    await record_calls(start_gateway, upstreams, issuer, policies, log, include_args)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [r for r in records if r.get("type") == "decision" and r.get("method") == "tools/call"]
    assert [r["decision"] for r in calls] == ["allow", "allow", "allow", "approval_required", "deny", "deny"]
    assert all("authz_input" in r for r in calls)
    assert all((r["authz_input"]["args"] is not None) == include_args for r in calls)

    same = replay(log, policies)  # the policies that made the decisions: nothing changes
    assert same.returncode == 0, same.stdout + same.stderr
    assert groups(same.stdout) == {}
    assert f"{len(calls)} replayed, 0 changed" in same.stdout

    result = replay(log, changed_policies(policies, tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    reader = "spiffe://customs.demo/agent/reader"
    pay = f"{reader} call_tool payments/pay: allow -> approval_required"
    expected = {"task-payments-under-limit": [pay], "writes-need-approval": [pay]}
    if include_args:  # the widget lookup flips only when its argument was logged
        widget = f"{reader} call_tool inventory/get_stock: allow -> deny"
        expected.update({"reads-allowed": [widget], "no-widget-lookups": [widget]})
    assert groups(result.stdout) == expected
    assert f"{len(calls)} replayed, {2 if include_args else 1} changed" in result.stdout


async def test_replay_rejects_unusable_input(tmp_path: Path, policies: Path) -> None:
    missing = replay(tmp_path / "nope.jsonl", policies)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    no_input = tmp_path / "old.jsonl"
    no_input.write_text(json.dumps({"type": "decision", "decision": "allow"}) + "\nnot json\n")
    unusable = replay(no_input, policies)
    assert unusable.returncode == 2 and "no replayable decisions" in unusable.stderr
    broken = tmp_path / "broken"
    shutil.copytree(policies, broken)
    (broken / "bad.cedar").write_text("permit(principal, action, resource) when { nonsense };\n")
    invalid = replay(no_input, broken)
    assert invalid.returncode == 2 and "invalid policies" in invalid.stderr
