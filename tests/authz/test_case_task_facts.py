"""The task facts a policy case or `policy explain` states must be ones the gateway could give: a total the schema's
Task type does not name (a misspelled `amout`) and a seen tool that is not `<upstream>/<tool>` can never be read by
a policy that validated, so a case stating them tested a task that never paid, or never called, anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import REPO, customs_main

SHIPPED = REPO / "policies"
READER = {"sub": "spiffe://customs.demo/agent/reader", "tenant": "acme"}
CASE = """principals:
  r: {{id: "spiffe://customs.demo/agent/reader", attributes: {{tenant: acme}}}}
cases:
  - name: over the limit is held
    principal: r
    tool: payments/pay
    args: {{account: a, amount: 50}}
    task: {task}
    expect: approval_required
"""


@pytest.mark.parametrize(("task", "problem"), [
    # Passed: with no `amount` total the limit permit never matched, so the case held the payment for the
    # wrong reason and would go on passing whatever the limit became.
    ("{totals: {amout: 10050}}", "context.task.totals.amout: the schema's Task totals record has no such total "
                                 "(amount), so no policy can read it; did you mean 'amount'?"),
    ("{seen_tools: [get_stock]}", "context.task.seen_tools: 'get_stock' is not '<upstream>/<tool>'"),
    ("{seen_tools: [Inventory/get_stock]}", "context.task.seen_tools: 'Inventory/get_stock' is not "
                                            "'<upstream>/<tool>'"),
])
def test_a_case_stating_task_facts_no_policy_can_see_is_unusable(tmp_path: Path, task: str, problem: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASE.format(task=task))
    done = customs_main("policy", "test", "--policies", SHIPPED, cases)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{cases}:4: cases[0]: {problem}" in done.stderr, done.stderr


def test_task_facts_the_gateway_gives_are_decided(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASE.format(task="{totals: {amount: 10050}, seen_tools: [inventory/get_stock], calls: 2}"))
    done = customs_main("policy", "test", "--policies", SHIPPED, cases)
    assert done.returncode == 0, done.stdout + done.stderr


def test_explain_refuses_a_total_the_schema_does_not_name() -> None:
    done = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", json.dumps(READER),
                        "--tool", "payments/pay", "--context", '{"task": {"totals": {"amout": 50}}}')
    assert done.returncode == 2, done.stdout
    assert "error: --context: context.task.totals.amout: the schema's Task totals record has no such total" \
        in done.stderr
    done = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", json.dumps(READER),
                        "--tool", "payments/pay", "--context", '{"task": {"totals": {"amount": 50}}}')
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "allow", done.stdout + done.stderr


def test_every_unusable_case_file_is_named_in_one_run(tmp_path: Path) -> None:
    """A directory of case files (CI runs `customs policy test policies/tests`) with two unusable files: both are
    named, and the cases of the others still run. The run stopped at the first, so fixing files took one run each
    and the cases after it were never reported."""
    (tmp_path / "a.yaml").write_text(CASE.format(task="{totals: {amout: 1}}"))
    (tmp_path / "b.yaml").write_text(CASE.format(task="{totals: {amount: 10050}}").replace(
        "expect: approval_required", "expect: allow"))
    (tmp_path / "c.yaml").write_text("cases: [\n")
    (tmp_path / "d.yaml").write_text(CASE.format(task="{totals: {amount: 10050}}"))
    done = customs_main("policy", "test", "--policies", SHIPPED, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{tmp_path / 'a.yaml'}:4: cases[0]: context.task.totals.amout" in done.stderr
    assert f"{tmp_path / 'c.yaml'}: line 2, column 1: invalid YAML" in done.stderr
    assert f"FAIL {tmp_path / 'b.yaml'}:4: over the limit is held: expected allow, got approval_required" \
        in done.stdout
    assert f"PASS {tmp_path / 'd.yaml'}: over the limit is held" in done.stdout
    assert done.stdout.rstrip().endswith("1 passed, 1 failed, 2 unusable case file(s)"), done.stdout
