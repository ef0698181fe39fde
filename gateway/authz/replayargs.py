"""Replay without logged arguments: which policies read `context.args`, and which calls they may decide otherwise.

Without `decision_log.include_args` a record is re-decided on `{}`. A policy that reads the arguments then
sees none: a forbid on them (`context.args.amount > 5000`) never fires, so a replay of a new forbid on
yesterday's log would report the very calls it is about as unchanged. So a call that an argument-reading
policy's scope covers (its principal, action and resource constraints, for the principal or any actor)
is undetermined whenever that policy could move it: a forbid a call that is not denied, a permit one
that is not allowed. The scope alone is checked (its conditions may read the arguments), by Cedar
itself, on a set holding each such policy as a permit with no conditions.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cedarpy

from gateway.authz import entities as E
from gateway.authz import evaluate
from gateway.authz.policyset import LoadedPolicies, context_tree, policy_text
from gateway.context import Decision, Outcome, Principal, ToolInfo


class ArgumentReaders:
    """The policies of one loaded set that read `context.args` (or the whole context)."""

    def __init__(self, loaded: LoadedPolicies) -> None:
        text = "\n".join(policy_text(name) for name in loaded.files)
        static: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text)).get("staticPolicies", {})
        self.effects: dict[str, str] = {}  # @id -> permit | forbid
        scopes: list[str] = []
        names: dict[str, str] = {}
        for internal, body in static.items():
            reads = context_tree(body)
            if reads is not None and "args" not in reads:
                continue
            name = loaded.name(internal)
            self.effects[name] = str(body.get("effect"))
            scope = {**body, "effect": "permit", "conditions": []}
            names[f"policy{len(scopes)}"] = name
            scopes.append(cedarpy.policies_from_json_str(json.dumps(
                {"staticPolicies": {"policy0": scope}, "templates": {}, "templateLinks": []})))
        self._scopes = dataclasses.replace(
            loaded, policy_set=cedarpy.PolicySet.from_str("\n".join(scopes)), id_by_internal=names,
            version=f"{loaded.version}:argument-scopes", quorum_by_id={}, context_reads={}, context_types={},
        ) if scopes else None

    def may_hinge_on_args(self, old_ids: list[str], new: Decision, errors: bool = False) -> bool:
        """A changed outcome replayed on `{}` may be the missing arguments, not the policies: so when a policy
        that determined either outcome reads them, when the recorded decision carried errors (`errors`: an
        argument of another type than declared denies; one that does not involve the arguments replays
        alike, so a change is theirs), or when nothing permitted the call now while some permit reads them
        (with the arguments it might have)."""
        if errors or any(pid in self.effects for pid in (*old_ids, *new.policy_ids)):
            return True
        return not new.policy_ids and "permit" in self.effects.values()

    def could_move(self, principal: Principal, action: str, tool: ToolInfo, outcome: Outcome) -> list[str]:
        """@ids of argument-reading policies whose scope covers this call and that could change `outcome`
        given the arguments: a forbid (unless it is a deny already) or a permit (unless it is an allow)."""
        if self._scopes is None:
            return []
        covering: set[str] = set()
        for member in E.members(principal):
            alone = Principal(id=member.id, issuer=principal.issuer, subject=member.id,
                              attributes=dict(member.attributes))
            decision = evaluate.decide(self._scopes, alone, action, tool, E.CallFacts())
            if decision.outcome == "allow":
                covering.update(decision.policy_ids)
        return sorted(pid for pid in covering
                      if (self.effects[pid] == "forbid" and outcome != "deny")
                      or (self.effects[pid] == "permit" and outcome != "allow"))
