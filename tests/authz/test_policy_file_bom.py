"""Policy files saved with a UTF-8 byte order mark (Windows Notepad and some editors write one) load as the same
text without it: the mark is no Cedar token, and it made the first line a `syntax error: invalid token` that no
one could see in the file, so the gateway refused to start, and `policy replay` and `config check`, which read
the files again, stopped on it too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.support.cli import REPO, customs_main

BOM = "\ufeff"
FORBID = ('@id("no-big-pay")\nforbid (principal, action == Action::"call_tool", resource == Tool::"payments/pay")\n'
          "when { context.args has amount && context.args.amount > 5000 };\n")


def bom_policies(tmp_path: Path) -> Path:
    """The shipped policies plus one forbid reading an argument, every file (schema too) starting with a BOM."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target, ignore=shutil.ignore_patterns("tests"))
    (target / "big.cedar").write_text(FORBID, encoding="utf-8")
    for path in [*target.glob("*.cedar"), target / "schema.cedarschema"]:
        path.write_text(BOM + path.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def test_policy_files_with_a_byte_order_mark_validate(tmp_path: Path) -> None:
    policies = bom_policies(tmp_path)
    result = customs_main("policy", "validate", policies)
    assert result.returncode == 0, result.stderr
    plain = tmp_path / "plain"
    shutil.copytree(policies, plain)
    for path in [*plain.glob("*.cedar"), plain / "schema.cedarschema"]:
        path.write_text(path.read_text(encoding="utf-8").removeprefix(BOM), encoding="utf-8")
    # the same set: the mark is no part of the text, so not of the version approvals remember either
    assert result.stdout.split("version ")[1] == customs_main("policy", "validate", plain).stdout.split("version ")[1]


def test_config_check_and_replay_read_them_too(tmp_path: Path) -> None:
    policies = bom_policies(tmp_path)
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "payments", "url": "http://127.0.0.1:9/mcp"}],
                                      "policies": {"dir": str(policies)}}))
    check = customs_main("config", "check", config)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr
    # a logged payment without its arguments: the argument-reading forbid makes it undetermined, not an error
    record = {"type": "decision", "decision": "allow", "policy_ids": ["task-payments-under-limit"],
              "authz_input": {"principal": {"id": "agent-1", "attributes": {"tenant": "acme"}}, "chain": [],
                              "action": "call_tool",
                              "tool": {"upstream": "payments", "name": "pay", "read_only": False,
                                       "destructive": True, "idempotent": False, "open_world": True,
                                       "sensitivity": "internal", "leaves_org": False},
                              "args_truncated": False, "environment": "dev", "args_contain_secret": False,
                              "task": {"calls": 0, "totals": {"amount": 50}, "seen_tools": []},
                              "time": "2026-01-05T10:00:00+00:00", "approved": False}}
    log = tmp_path / "decisions.jsonl"
    log.write_text(json.dumps(record) + "\n")
    replay = customs_main("policy", "replay", "--log", log, "--policies", policies)
    assert replay.returncode == 0, replay.stderr
    assert "1 replayed, 0 changed" in replay.stdout and "1 undetermined" in replay.stdout, replay.stdout
