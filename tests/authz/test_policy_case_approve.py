"""An `approve` case of `customs policy test` tests the approval it writes, or is refused (exit 2) naming what is
wrong: a misspelled key (`upstrem`), a missing `approval:` or its `upstream`/`tool`, a chain written as one string
(read letter by letter) and an agent call's keys (`args:` beside `approval:`, `principal:`, `context:`) were all
decided quietly, as an approval of another call than the one written, and a case could pass testing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from tests.support.cli import customs_main

USER = "{id: mallory, groups: [approvers]}"
APPROVAL = "{id: ap-1, upstream: payments, tool: pay, args: {amount: 50}, requester: r, chain: []}"
REFUSED = {
    "misspelled approval key": (f"user: {USER}, approval: {{id: ap-1, upstrem: payments, tool: pay}}", "upstrem"),
    "misspelled user key": (f"user: {{id: mallory, grups: [finance]}}, approval: {APPROVAL}", "grups"),
    "no approval": (f"user: {USER}", "approval"),
    "approval without upstream": (f"user: {USER}, approval: {{id: ap-1, tool: pay}}", "upstream"),
    "approval without tool": (f"user: {USER}, approval: {{id: ap-1, upstream: payments}}", "tool"),
    "chain as one string": (f"user: {USER}, approval: {{upstream: payments, tool: pay, chain: orchestrator}}",
                            "chain"),
    "chain of numbers": (f"user: {USER}, approval: {{upstream: payments, tool: pay, chain: [1]}}", "chain"),
    "requester a list": (f"user: {USER}, approval: {{upstream: payments, tool: pay, requester: [r]}}", "requester"),
    "args beside approval": (f"user: {USER}, approval: {{upstream: payments, tool: pay}}, args: {{amount: 50}}",
                             "args"),
    "a principal": (f"user: {USER}, approval: {APPROVAL}, principal: {{id: a}}", "principal"),
    "a context": (f"user: {USER}, approval: {APPROVAL}, context: {{environment: production}}", "context"),
    "groups of numbers": (f"user: {{id: mallory, groups: [1]}}, approval: {APPROVAL}", "groups"),
}


@pytest.mark.parametrize(("body", "named"), REFUSED.values(), ids=REFUSED.keys())
def test_an_approve_case_that_would_test_another_approval_is_refused(tmp_path: Path, body: str, named: str) -> None:
    # each was decided quietly (exit 0 where it denied, as mallory is no finance approver; 1 otherwise)
    _refused(tmp_path, f"{{name: held payment, action: approve, {body}, expect: deny}}", named)


def test_the_documented_approve_cases_still_run(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {SHIPPED}\ncases:\n"
                     f"  - {{name: a, action: approve, user: {{id: bob, groups: [approvers, finance]}}, "
                     f"approval: {APPROVAL}, expect: allow, policies: [approvers-decide], expect_errors: false}}\n"
                     f"  - {{name: b, action: approve, user: {{id: mallory, groups: [finance]}}, "
                     f"approval: {{id: ap-4, upstream: inventory, tool: set_stock, requester: r}}, expect: deny}}\n")
    result = customs_main("policy", "test", cases, SHIPPED / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("body", ["approval: granted", f"user: {USER}", f"approval: {APPROVAL}"])
def test_an_agent_call_case_with_an_approve_key_is_refused(tmp_path: Path, body: str) -> None:
    """`approval: granted` on a call case (the context's name; the case key is `approved: true`) was ignored:
    the call was decided without approval, and a case expecting its denial passed."""
    _refused(tmp_path, f"{{name: paid, principal: {{id: a, attributes: {{tenant: acme}}}}, tool: payments/pay, "
                       f"{body}, expect: approval_required}}", "approved: true")


def _refused(tmp_path: Path, case: str, named: str) -> None:
    """`policy test` on one case refuses it: exit 2, the error at the case's line naming `named`, no traceback."""
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {SHIPPED}\ncases:\n  - {case}\n")
    result = customs_main("policy", "test", cases)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: {cases}:3: cases[0]" in result.stderr and named in result.stderr, result.stderr
