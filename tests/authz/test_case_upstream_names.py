"""An upstream name no config can hold (`Inventory/get_stock`: names are [a-z0-9_-]+) in `policy test` and
`policy explain`: it was decided as given, so a case on `Server::"Inventory"` passed while no call ever matches
it (the gateway's resources are `Server::"inventory"`). It is an error naming the tool, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from tests.support.cli import customs_main

BAD = ["Inventory/get_stock", "inv entory/get_stock", "inventory.prod/get_stock"]


@pytest.mark.parametrize("tool", BAD)
def test_explain_refuses_an_upstream_no_config_can_name(tool: str) -> None:
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a"}',
                          "--tool", tool)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2 and "[a-z0-9_-]+" in result.stderr and repr(tool.partition("/")[0]) \
        in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("case", [
    "{name: c, principal: {id: a}, tool: Inventory/get_stock, expect: deny}",
    "{name: c, action: approve, user: {id: u, groups: [approvers]}, approval: {upstream: Payments, tool: pay}, "
    "expect: allow}",
])
def test_policy_test_refuses_it_in_a_case(tmp_path: Path, case: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {SHIPPED}\ncases:\n  - {case}\n")
    result = customs_main("policy", "test", cases)
    assert result.returncode == 2 and f"{cases}:3: cases[0]" in result.stderr and "[a-z0-9_-]+" in result.stderr, \
        result.stdout + result.stderr


def test_lower_case_names_with_digits_dashes_and_underscores_still_run() -> None:
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a"}',
                          "--tool", "inv-2_x/Get.Stock")
    assert result.returncode == 0, result.stderr
