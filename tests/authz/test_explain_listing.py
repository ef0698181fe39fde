"""`customs policy explain --action list_tools` says whether tools/list shows the tool, as the gateway decides it.

The gateway lists a tool whose `call_tool` is not denied (approval-required tools included, marked), or one a
`list_tools` permit shows while no `call_tool` permit covers it on empty arguments; the shipped policies permit no
`list_tools` at all, so explain answered `deny` for every tool an agent does see in tools/list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO, customs_main

READER = {"sub": "spiffe://customs.demo/agent/reader", "tenant": "acme"}


def _explain(tool: str, annotations: dict[str, Any], policies: Path = REPO / "policies",
             args: dict[str, Any] | None = None) -> dict[str, Any]:
    done = customs_main("policy", "explain", "--policies", policies, "--principal-claims", json.dumps(READER),
                        "--tool", tool, "--action", "list_tools", "--annotations", json.dumps(annotations),
                        "--args", json.dumps(args or {}))
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize(("tool", "annotations", "listed"), [
    ("inventory/get_stock", {"read_only": True}, True),  # callable: listed
    ("inventory/set_stock", {"read_only": False}, True),  # needs approval: listed, marked
    ("hr/salaries", {"read_only": True, "sensitivity": "restricted"}, False),  # a forbid of the call fires
])
def test_explain_of_list_tools_says_whether_the_gateway_lists_the_tool(tool: str, annotations: dict[str, Any],
                                                                      listed: bool) -> None:
    report = _explain(tool, annotations)
    assert report["outcome"] == "deny"  # the list_tools action itself: the shipped policies permit none
    assert report["listed"] is listed


def test_a_list_tools_permit_lists_a_tool_no_call_permit_covers_on_empty_arguments(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    for path in (REPO / "policies").glob("*.c*"):
        (policies / path.name).write_bytes(path.read_bytes())
    (policies / "catalog.cedar").write_text('@id("catalog-visible")\n'
                                            'permit (principal, action == Action::"list_tools", resource);\n')
    report = _explain("infrastructure/restart", {"read_only": False}, policies)
    assert report["outcome"] == "allow" and report["listed"] is True
    # Arguments do not count: lists are decided with none, whatever --args says.
    assert _explain("inventory/get_stock", {"read_only": True}, args={"sku": "w"})["listed"] is True
