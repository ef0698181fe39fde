"""An `approve` case of `customs policy test`: a person deciding a held call, on exactly the approval it writes."""

from __future__ import annotations

from typing import Any

from gateway.authz.casefields import CaseError, check_keys, check_upstream, mapping
from gateway.authz.evaluate import decide_approve
from gateway.authz.policyset import LoadedPolicies
from gateway.context import Decision

# What an agent's call would state (principal, args, context, ...) does not apply to an approve case.
_APPROVE_CASE_KEYS = frozenset({"name", "action", "user", "approval", "expect", "policies", "expect_errors"})
_USER_KEYS = frozenset({"id", "groups", "chain"})  # chain: the actors of the approver's token (`act` claims)
_APPROVAL_KEYS = frozenset({"id", "upstream", "tool", "args", "requester", "chain"})


def approve_decision(policies: LoadedPolicies, case: dict[str, Any], where: str, name: str) -> Decision:
    """The case's decision. A misspelled or an agent call's key, no approval or no upstream or tool in it, a chain
    as one string (read letter by letter) were decided quietly, as another approval, so a case passed untested."""
    check_keys(case, _APPROVE_CASE_KEYS, f"{where} ({name}, action approve)")
    user = case.get("user") or {}
    groups = (user.get("groups") or []) if isinstance(user, dict) else None
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not isinstance(groups, list) \
            or not all(isinstance(g, str) for g in groups):
        raise CaseError(f"{where}: approve cases need user: {{id: ..., groups: [...]}} (groups must be a list of "
                        "strings)")
    check_keys(user, _USER_KEYS, f"{where}: user")
    actors = user.get("chain", [])
    if not isinstance(actors, list) or not all(isinstance(a, str) and a for a in actors):
        raise CaseError(f"{where}: user.chain must be a list of actor ids (the approver's token's act claims)")
    if case.get("approval") is None:
        raise CaseError(f"{where}: approve cases need approval: {{id, upstream, tool, args, requester, chain}}")
    approval = mapping(case.get("approval"), where, "approval")
    check_keys(approval, _APPROVAL_KEYS, f"{where}: approval")
    for key in ("upstream", "tool"):
        if not isinstance(approval.get(key), str) or not approval[key]:
            raise CaseError(f"{where}: approval.{key} must be a non-empty string (the held call's {key})")
    check_upstream(approval["upstream"], f"{where}: approval")
    chain = approval.get("chain", [])
    if not isinstance(chain, list) or not all(isinstance(c, str) for c in chain) \
            or not all(isinstance(approval.get(k, ""), str) for k in ("id", "requester")):
        raise CaseError(f"{where}: approval.id and approval.requester must be strings, approval.chain a list of them")
    mapping(approval.get("args"), where, "approval.args")
    return decide_approve(policies, user["id"], groups, dict(approval), tuple(actors))
