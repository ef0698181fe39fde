"""Every case in policies/tests/*.yaml passes against the shipped policies (the same runner as `policy test`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from gateway.authz.cases import CaseResult, run_cases_file
from gateway.authz.policyset import load_policies

LOADED = load_policies(SHIPPED)
RESULTS: list[CaseResult] = [r for path in sorted((SHIPPED / "tests").glob("*.yaml"))
                             for r in run_cases_file(path, policies=LOADED)]


def test_cases_exist_for_every_shipped_policy() -> None:
    named = {n for r in RESULTS for n in r.decision.policy_ids}
    assert named == set(LOADED.id_by_internal.values())
    assert len(RESULTS) >= 30


@pytest.mark.parametrize("result", RESULTS, ids=[r.name for r in RESULTS])
def test_shipped_case(result: CaseResult) -> None:
    assert result.ok, result.message


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    cases = tmp_path / "bad.yaml"
    cases.write_text("cases:\n  - {principal: {id: a, attributes: {tenant: t}}, tool: inventory/get_stock,\n"
                     "     labels: {read_only: true}, expect: deny, policies: [x]}\n")
    (result,) = run_cases_file(cases, policies=LOADED)
    assert not result.ok and "expected deny, got allow" in result.message and "expected policies" in result.message
