"""Replay without logged arguments: which policies read `context.args`, and which calls they may decide otherwise.

Without `decision_log.include_args` a record is re-decided on `{}`. A policy that reads the arguments then
sees none: a forbid on them (`context.args.amount > 5000`) never fires, so a replay of a new forbid on
yesterday's log would report the very calls it is about as unchanged. So a call that an argument-reading
policy's scope covers (its principal, action and resource constraints, for the principal or any actor)
is undetermined whenever that policy could move it: a forbid a call that is not denied, a permit one
that is not allowed. The scope alone is checked (its conditions may read the arguments), by Cedar
itself, on a set holding each such policy as a permit with no conditions.

With `include_args` a record still lacks the value of each argument the log redacted (`[REDACTED]`: a secret-named
field, `token_limit` as much as `api_token`, or a secret-looking text). The same holds for those arguments alone:
what hinges on a policy that reads one of them is undetermined (`hidden`: their names; None, every argument).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import cedarpy

from gateway.authz import entities as E
from gateway.authz import evaluate
from gateway.authz.policyset import LoadedPolicies, context_tree, policy_text
from gateway.context import Decision, Outcome, Principal, ToolInfo
from gateway.credentials.redaction import MARK

_ARG_NAME = re.compile(r"context\.args\.([A-Za-z_][A-Za-z0-9_]*)")


def redacted_args(args: Any) -> frozenset[str]:
    """The logged arguments whose value (or name) holds a redaction: replay does not know what the call sent."""
    if not isinstance(args, dict):
        return frozenset()
    return frozenset(str(k) for k, v in args.items()
                     if MARK in str(k) or MARK in json.dumps(v, ensure_ascii=False, default=str))


class ArgumentReaders:
    """The policies of one loaded set that read `context.args` (or the whole context)."""

    def __init__(self, loaded: LoadedPolicies) -> None:
        text = "\n".join(policy_text(name) for name in loaded.files)
        static: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text)).get("staticPolicies", {})
        self.effects: dict[str, str] = {}  # @id -> permit | forbid
        self.reads: dict[str, frozenset[str] | None] = {}  # @id -> the arguments it reads (None: all of them)
        scopes: list[str] = []
        names: dict[str, str] = {}
        for internal, body in static.items():
            reads = context_tree(body)
            if reads is not None and "args" not in reads:
                continue
            name = loaded.name(internal)
            self.effects[name] = str(body.get("effect"))
            args = None if reads is None else reads["args"]
            self.reads[name] = None if args is None else frozenset(args)
            scope = {**body, "effect": "permit", "conditions": []}
            names[f"policy{len(scopes)}"] = name
            scopes.append(cedarpy.policies_from_json_str(json.dumps(
                {"staticPolicies": {"policy0": scope}, "templates": {}, "templateLinks": []})))
        self._scopes = dataclasses.replace(
            loaded, policy_set=cedarpy.PolicySet.from_str("\n".join(scopes)), id_by_internal=names,
            version=f"{loaded.version}:argument-scopes", quorum_by_id={}, context_reads={}, context_types={},
        ) if scopes else None

    def _reads(self, pid: str, hidden: frozenset[str] | None) -> bool:
        """Whether policy `pid` reads an argument the record does not hold (`hidden`; None: none it holds)."""
        if pid not in self.effects:
            return False
        names = self.reads.get(pid)
        return hidden is None or names is None or bool(names & hidden)

    def may_hinge_on_args(self, old_ids: list[str], new: Decision, errors: bool = False,
                          hidden: frozenset[str] | None = None) -> bool:
        """A changed outcome replayed on `{}` may be the missing arguments, not the policies: so when a policy
        that determined either outcome reads them, when the recorded decision carried errors (`errors`: an
        argument of another type than declared denies; one that does not involve the arguments replays
        alike, so a change is theirs), or when nothing permitted the call now while some permit reads them
        (with the arguments it might have). With `hidden` (the redacted arguments; the others were replayed as
        sent) only those count, and so does an error the replay met on one of them (a redacted number is text)."""
        if errors or any(self._reads(pid, hidden) for pid in (*old_ids, *new.policy_ids)):
            return True
        if hidden is not None and any(name in hidden for e in new.errors for name in _ARG_NAME.findall(e)):
            return True
        return not new.policy_ids and any(effect == "permit" and self._reads(pid, hidden)
                                          for pid, effect in self.effects.items())

    def could_move(self, principal: Principal, action: str, tool: ToolInfo, outcome: Outcome,
                   hidden: frozenset[str] | None = None) -> list[str]:
        """@ids of argument-reading policies whose scope covers this call and that could change `outcome`
        given the arguments: a forbid (unless it is a deny already) or a permit (unless it is an allow). With
        `hidden`, only those reading one of these redacted arguments."""
        if self._scopes is None:
            return []
        covering: set[str] = set()
        for member in E.members(principal):
            alone = Principal(id=member.id, issuer=principal.issuer, subject=member.id,
                              attributes=dict(member.attributes))
            decision = evaluate.decide(self._scopes, alone, action, tool, E.CallFacts())
            if decision.outcome == "allow":
                covering.update(decision.policy_ids)
        return sorted(pid for pid in covering if self._reads(pid, hidden)
                      and ((self.effects[pid] == "forbid" and outcome != "deny")
                           or (self.effects[pid] == "permit" and outcome != "allow")))


def recorded_errors_hinge(errors: Any, hidden: frozenset[str] | None) -> bool:
    """Whether the record's `policy_errors` may involve what replay does not know: any error, when no argument was
    logged; else one naming a redacted argument."""
    if not errors or not isinstance(errors, list):
        return False
    return hidden is None or any(name in hidden for e in errors for name in _ARG_NAME.findall(str(e)))
