"""Whether `tools/list` shows a tool: the rule the gateway's lists apply (gateway/listing.py), and what
`customs policy explain --action list_tools` reports, so the two cannot disagree.

A tool shows when it may be called (approval-required tools included, marked), or when a policy permits
`list_tools` on it and `call_tool` is denied only by default (no permit without arguments); a policy that forbids
`list_tools` on it (or fails to evaluate: fail closed) hides it either way, and so does a forbid of `call_tool`
that fires: listed and then answered `Unknown tool`, a denied tool would not look like a missing one.
"""

from __future__ import annotations

from gateway.authz import entities as E
from gateway.authz.evaluate import decide
from gateway.authz.policyset import LoadedPolicies
from gateway.context import Decision, Principal, ToolInfo


def shown_in_tools_list(listing: Decision, call: Decision) -> bool:
    """`listing`: the `list_tools` decision, `call`: the `call_tool` one, both on empty arguments."""
    if listing.outcome == "deny" and (listing.policy_ids or listing.errors):
        return False
    if call.outcome != "deny":
        return True
    return listing.outcome == "allow" and not call.policy_ids and not call.errors


def listed(policies: LoadedPolicies, principal: Principal, tool: ToolInfo, environment: str) -> bool:
    """Would tools/list show `tool` to `principal`? Decided as the gateway decides lists: on empty arguments."""
    facts = E.CallFacts(args={}, environment=environment)
    return shown_in_tools_list(decide(policies, principal, "list_tools", tool, facts),
                               decide(policies, principal, "call_tool", tool, facts))
