"""Replay through a real gateway's decision log: `customs policy replay` names exactly the decisions a
policy change flips, grouped by policy, with exit codes 0 (none changed), 1 (some changed), 2 (bad input)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.lifecycle.conftest import READER, REPO, Upstreams, gateway_config, reason_of, token
from tests.support.cli import customs_main
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

UNTRUSTED = "spiffe://customs.demo/agent/untrusted"
NO_WIDGETS = '''
@id("no-widget-lookups")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has sku && context.args.sku == "widget" };
'''


def replay(log: Path, policies: Path, *, process: bool = False) -> subprocess.CompletedProcess[str]:
    """`customs policy replay`: its main() in this process (it sends no request), or as a real child process (each
    cost ~1 s of the suite: one test keeps it)."""
    argv = ["policy", "replay", "--log", str(log), "--policies", str(policies)]
    if not process:
        return customs_main(*argv)
    return subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


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
        elif line.startswith("undetermined: "):
            current = out.setdefault("(undetermined)", [])
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

    result = replay(log, changed_policies(policies, tmp_path), process=True)
    assert result.returncode == 1, result.stdout + result.stderr
    reader = "spiffe://customs.demo/agent/reader"
    pay = f"{reader} call_tool payments/pay: allow -> approval_required"
    expected = {"task-payments-under-limit": [pay], "writes-need-approval": [pay]}
    if include_args:  # the widget lookup flips only when its argument was logged
        widget = f"{reader} call_tool inventory/get_stock: allow -> deny"
        expected.update({"reads-allowed": [widget], "no-widget-lookups": [widget]})
    else:  # else both lookups are within the new forbid's scope, and said to be undetermined
        lookup = (f"{reader} call_tool inventory/get_stock: allow, unchanged without arguments; "
                  "no-widget-lookups reads them")
        expected["(undetermined)"] = [lookup, lookup]
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


FREEZE = '''
@id("freeze-stock")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/set_stock");
'''


def with_freeze(policies: Path, target: Path) -> Path:
    """The policies plus an outright forbid of inventory/set_stock (approval or not)."""
    shutil.copytree(policies, target)
    (target / "freeze.cedar").write_text(FREEZE)
    return target


async def held_calls_without_waiting(start_gateway: Any, up: Upstreams, issuer: TestIssuer, policies: Path,
                                     shadow: Path, log: Path) -> None:
    """Held calls answered at once (approval_pending) and retried: pending, reused and executed, reused then
    failed upstream, denied; plus an allowed and a denied call. Decided under a shadow set too."""
    async with run_http_server(inventory_server()) as stock_url:
        config = gateway_config(up, issuer, policies, decision_log={"path": str(log)},
                                policies={"dir": str(policies), "shadow_dir": str(shadow), "watch": False})
        config["upstreams"].append({"name": "stock", "url": stock_url})
        gw = await start_gateway(config)
        approvals = gw.gateway.parts.approvals
        async with sdk_client(gw.mcp, token(issuer, gw)) as client:
            assert not (await client.call_tool("inventory__get_stock", {"sku": "widget"})).is_error      # allow
            held: dict[str, str] = {}  # all three answered approval_pending; gizmo's stays pending
            for args in ({"sku": "gizmo", "quantity": 1}, {"sku": "widget", "quantity": 41},
                         {"sku": "gadget", "quantity": 2}):
                reason, data = await reason_of(client.call_tool("inventory__set_stock", args))
                assert reason == "approval_pending"
                held[str(args["sku"])] = data["approval_id"]
            await approvals.decide(held["gadget"], "alice", "denied", "no")
            reason, _ = await reason_of(client.call_tool("inventory__set_stock", {"sku": "gadget", "quantity": 2}))
            assert reason == "approval_denied"
            await approvals.decide(held["widget"], "alice", "approved", "ok")
            assert not (await client.call_tool("inventory__set_stock", {"sku": "widget", "quantity": 41})).is_error
            reason, data = await reason_of(client.call_tool("stock__set_stock", {"sku": "gizmo", "quantity": 9}))
            assert reason == "approval_pending"
            await approvals.decide(data["approval_id"], "alice", "approved", "ok")
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:  # the stock upstream is gone now
        reason, _ = await reason_of(client.call_tool("stock__set_stock", {"sku": "gizmo", "quantity": 9}))
        assert reason.startswith("upstream_"), reason
    async with sdk_client(gw.mcp, token(issuer, gw, UNTRUSTED)) as untrusted:
        reason, _ = await reason_of(untrusted.call_tool("inventory__get_stock", {"sku": "widget"}))
        assert reason == "unknown_tool"                                                          # deny
    await gw.runner.cleanup()


async def held_calls_waiting(start_gateway: Any, up: Upstreams, issuer: TestIssuer, policies: Path,
                             log: Path, verdicts: list[str]) -> list[str]:
    """Held calls waiting on the open request, each decided by `verdicts` (approved, expired) while it waits;
    returns the error reason each call ended with ("" when it ran). Same log file: gateways append."""
    gw = await start_gateway(gateway_config(up, issuer, policies, decision_log={"path": str(log)},
                                            approvals={"wait_s": 60, "keepalive_s": 1}))
    approvals = gw.gateway.parts.approvals
    created: asyncio.Queue[str] = asyncio.Queue()
    approvals.add_listener(created.put_nowait)
    reasons = []
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        for number, verdict in enumerate(verdicts):  # distinct arguments: each call needs its own approval
            call = asyncio.create_task(client.call_tool("inventory__set_stock", {"sku": "widget",
                                                                                 "quantity": 100 + number}))
            approval_id = await asyncio.wait_for(created.get(), 30)  # the held call's item, just created
            if verdict == "expired":
                await approvals.cancel(approval_id, "expired")
            else:
                await approvals.decide(approval_id, "alice", verdict, "ok")
            try:
                result = await asyncio.wait_for(call, 30)
                reasons.append("tool_error" if result.is_error else "")
            except MCPError as exc:
                reasons.append(str((exc.data or {}).get("reason")))
            while not created.empty():  # later changes of this item (decided, executed)
                created.get_nowait()
    await gw.runner.cleanup()
    return reasons


async def test_replay_of_held_approved_and_failed_calls_is_unchanged_under_the_same_policies(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path, tmp_path: Path) -> None:
    """Every record shape: allowed, denied, pending, denied and expired approvals, approved while waiting
    and executed, reused and executed, reused and failed upstream, with shadow decisions."""
    log = tmp_path / "decisions.jsonl"
    shadow = with_freeze(policies, tmp_path / "shadow")
    await held_calls_without_waiting(start_gateway, upstreams, issuer, policies, shadow, log)
    assert await held_calls_waiting(start_gateway, upstreams, issuer, policies, log,
                                    ["approved", "expired"]) == ["", "approval_expired"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    calls = {n: r for n, r in enumerate(records, start=1) if r.get("type") == "decision"}
    released = {n: r for n, r in calls.items() if (r.get("approval") or {}).get("outcome") in ("approved", "reused")}
    assert sorted(r["approval"]["outcome"] for r in released.values()) == ["approved", "reused", "reused"]
    assert all(r["decision"] == "approval_required" and r["authz_input"]["approved"] for r in released.values())
    assert sorted(r["outcome"] for r in released.values()) == ["error", "ok", "ok"]  # one failed upstream
    assert len(records) > len(calls) and all("authz_input" in r for r in calls.values())

    same = replay(log, policies)
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"{len(calls)} replayed, 0 changed, {len(records) - len(calls)} skipped" in same.stdout

    # The shadow set is a real change: replaying against it names exactly the calls it disagreed on.
    frozen = replay(log, shadow)
    assert frozen.returncode == 1, frozen.stdout + frozen.stderr
    shadowed = {n for n, r in calls.items() if "shadow_decision" in r}  # the waiting gateway had no shadow set
    disagreed = {n for n in shadowed if calls[n]["shadow_decision"] != calls[n]["decision"]}
    flipped = {int(line.split()[1].rstrip(":")) for line in frozen.stdout.splitlines() if line.startswith("  line ")}
    assert flipped == {n for n, r in calls.items() if r["tool"] == "set_stock" and r["upstream"] == "inventory"}
    assert disagreed and flipped & shadowed == disagreed
    for n in released:
        if calls[n]["upstream"] == "inventory":
            assert f"line {n}: {READER} call_tool inventory/set_stock: approval_required -> deny" in frozen.stdout
    assert f"{len(calls)} replayed, {len(flipped)} changed" in frozen.stdout


async def test_replay_of_a_call_the_recheck_denied_compares_the_recheck(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path, tmp_path: Path) -> None:
    """Held, the policies change to forbid it, approved: the record is the re-check's deny (with approval)."""
    log = tmp_path / "decisions.jsonl"
    before = shutil.copytree(policies, tmp_path / "before")  # the set the call was held under
    gw = await start_gateway(gateway_config(upstreams, issuer, policies, decision_log={"path": str(log)},
                                            approvals={"wait_s": 60, "keepalive_s": 1}))
    approvals, engine = gw.gateway.parts.approvals, gw.gateway.parts.engine
    created: asyncio.Queue[str] = asyncio.Queue()
    approvals.add_listener(created.put_nowait)
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        call = asyncio.create_task(reason_of(client.call_tool("inventory__set_stock", {"sku": "gizmo",
                                                                                       "quantity": 5})))
        approval_id = await asyncio.wait_for(created.get(), 30)
        (policies / "freeze.cedar").write_text(FREEZE)
        assert await engine.reload() is True
        await approvals.decide(approval_id, "alice", "approved", "ok")
        reason, _ = await asyncio.wait_for(call, 30)
    assert reason == "unknown_tool"
    await gw.runner.cleanup()
    [record] = [json.loads(line) for line in log.read_text().splitlines() if '"type":"decision"' in line]
    assert record["decision"] == "deny" and record["authz_input"]["approved"] is True

    same = replay(log, policies)  # the frozen set, in force at the re-check
    assert same.returncode == 0 and "1 replayed, 0 changed" in same.stdout, same.stdout + same.stderr
    older = replay(log, before)  # without the freeze the approved call would have run
    assert older.returncode == 1, older.stdout + older.stderr
    assert f"{READER} call_tool inventory/set_stock: deny -> allow" in older.stdout
