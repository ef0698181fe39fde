"""Replay of arguments the decision log redacted: a value logged as `[REDACTED]` is not known, so a decision that may
hinge on it is undetermined, never a change. `token_limit` is a number whose name holds the word `token`: the log
redacts it (secrets.redact_keys), and replayed as the text `[REDACTED]` it did not fit its declared Long, so a log
replayed against the very policies that wrote it reported an allowed call as `allow -> deny`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.lifecycle.conftest import REPO, Upstreams, gateway_config, token
from tests.lifecycle.test_life_replay import groups, replay
from tests.support.mcp_client import sdk_client
from tests.support.tokens import TestIssuer

LIMIT = '''
@id("lookup-token-limit")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has token_limit && context.args.token_limit > 10000 };
'''
CHANGES = '''
@id("no-test-tokens")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has api_token && context.args.api_token like "test-*" };

@id("no-gizmos")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has sku && context.args.sku == "gizmo" };
'''
READER = "spiffe://customs.demo/agent/reader"
LOOKUP = f"{READER} call_tool inventory/get_stock"


def with_arguments(policies: Path, target: Path, *extra: str) -> Path:
    """The policies, with `token_limit` (Long) and `api_token` (String) in Args, and the given policy files."""
    shutil.copytree(policies, target)
    schema = target / "schema.cedarschema"
    schema.write_text(re.sub(r"type Args = \{\n", 'type Args = {\n  "api_token"?: String,\n  "token_limit"?: Long,\n',
                             schema.read_text(), count=1))
    for number, text in enumerate(extra):
        (target / f"extra{number}.cedar").write_text(text)
    return target


async def test_replay_of_a_redacted_argument_is_undetermined_not_changed(start_gateway: Any, upstreams: Upstreams,
                                                                         issuer: TestIssuer, policies: Path,
                                                                         tmp_path: Path) -> None:
    enforced = with_arguments(policies, tmp_path / "enforced", LIMIT)
    log = tmp_path / "decisions.jsonl"
    gw = await start_gateway(gateway_config(upstreams, issuer, enforced,
                                            decision_log={"path": str(log), "include_args": True}))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:  # three allowed lookups
        await client.call_tool("inventory__get_stock", {"sku": "widget", "token_limit": 500})
        await client.call_tool("inventory__get_stock", {"sku": "gadget"})  # nothing redacted
        await client.call_tool("inventory__get_stock", {"sku": "gizmo", "api_token": "prod-1"})
    await gw.runner.cleanup()  # the decision log is drained and closed
    calls = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "decision"]
    assert [(r["decision"], r["authz_input"]["args"]) for r in calls] == [
        ("allow", {"sku": "widget", "token_limit": "[REDACTED]"}), ("allow", {"sku": "gadget"}),
        ("allow", {"sku": "gizmo", "api_token": "[REDACTED]"})]

    # The policies that made the decisions: nothing changed. The limit's forbid reads a number the log holds as
    # text; what it would decide on the number sent is not known.
    same = replay(log, enforced)
    assert same.returncode == 0, same.stdout + same.stderr
    assert groups(same.stdout) == {"(undetermined)": [
        f"{LOOKUP}: allow -> deny (as replayed with redacted arguments)"]}
    assert "3 replayed, 0 changed, " in same.stdout
    assert same.stdout.rstrip().endswith("1 undetermined (arguments not logged or redacted)"), same.stdout
    assert "; a value the log redacted stays unknown)" in same.stdout

    # A forbid on a redacted token may refuse the third lookup (undetermined); one on the SKU, which the log holds,
    # does refuse it (changed, exit 1); the lookup that sent neither stays as it was.
    other = replay(log, with_arguments(policies, tmp_path / "other", LIMIT, CHANGES))
    assert other.returncode == 1, other.stdout + other.stderr
    assert groups(other.stdout) == {
        "no-gizmos": [f"{LOOKUP}: allow -> deny"], "reads-allowed": [f"{LOOKUP}: allow -> deny"],
        "(undetermined)": [f"{LOOKUP}: allow -> deny (as replayed with redacted arguments)"]}
    assert "3 replayed, 1 changed, " in other.stdout

    tokens_only = replay(log, with_arguments(policies, tmp_path / "tokens", CHANGES.split("@id(\"no-gizmos")[0]))
    assert tokens_only.returncode == 0, tokens_only.stdout + tokens_only.stderr
    assert groups(tokens_only.stdout) == {"(undetermined)": [
        f"{LOOKUP}: allow, unchanged with redacted arguments; no-test-tokens reads them"]}


def test_replay_reads_the_log_from_stdin_as_dash(tmp_path: Path) -> None:
    """`zcat decisions.jsonl.gz | customs policy replay --log - …`: a rotated, compressed log replays without a
    temporary file (`-` was read as a file named `-`: `cannot read -`, exit 2)."""
    record = {"type": "decision", "issuer": "https://idp.test", "decision": "allow", "policy_ids": ["reads-allowed"],
              "authz_input": {"principal": {"id": READER, "attributes": {"tenant": "acme"}}, "chain": [],
                              "action": "call_tool", "tool": {"upstream": "inventory", "name": "get_stock",
                                                               "read_only": True}, "environment": "dev",
                              "time": "2026-05-01T12:00:00+00:00"}}
    done = subprocess.run([sys.executable, "-m", "gateway", "policy", "replay", "--log", "-", "--policies",
                           str(REPO / "policies")], input=json.dumps(record) + "\n", capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 replayed, 0 changed" in done.stdout
