"""Find conditions on the principal's or resource's entity type or parents that the schema makes impossible.

Agents are `in Tenant` only and people (`User`) `in Group`, but Cedar's validator types `principal in
Group::"contractors"` in a policy about `call_tool` as always false, not as an error: a forbid meant for an agent
group (an agent's groups are `principal.groups`) validates and never fires. So are `principal == User::"bob"` and
`principal is User` for an agent action, or `resource in Tenant::"acme"`. For each `in`, `==` and `is` on
`principal` or `resource` against entity literals, the types the policy's actions admit (their `appliesTo`) and
the types those may be `in` (the schema's `entity X in [...]`, transitively) decide whether it can ever hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import cedarpy

from gateway.authz.argnames import policy_order, walk
from gateway.authz.argtypes import Applies, entity_relations

_SIDES = {"principal": 0, "resource": 1}


def _literals(node: Any) -> list[tuple[str, str]] | None:
    """(type, id) of an entity literal or of every item of a set of them; None for anything else."""
    items = node["Set"] if isinstance(node, dict) and isinstance(node.get("Set"), list) else [node]
    out: list[tuple[str, str]] = []
    for item in items:
        entity = item.get("Value", {}).get("__entity") if isinstance(item, dict) else None
        if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
            return None
        out.append((entity["type"], str(entity.get("id", ""))))
    return out


def _actions(scope: Any, applies: Applies) -> list[str] | None:
    """The actions a policy's action scope admits; None when one is not the schema's own (nothing checked)."""
    op = scope.get("op") if isinstance(scope, dict) else None
    if op == "All":
        return sorted(applies)
    entities = [scope.get("entity")] if op == "==" else scope.get("entities") if op == "in" else None
    if not isinstance(entities, list):
        return None
    ids = [str(e.get("id")) for e in entities if isinstance(e, dict)]
    return ids if ids and all(i in applies for i in ids) else None


def impossible(body: Any, ancestors: dict[str, frozenset[str]], applies: Applies) -> list[str]:
    """The conditions of one policy (JSON form) that no request of its actions can make true, as Cedar text."""
    actions = _actions(body.get("action"), applies) if isinstance(body, dict) else None
    if not actions:
        return []
    types = {var: {t for a in actions for t in applies[a][side]} for var, side in _SIDES.items()}
    found: list[str] = []

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        if len(node) != 1:
            return None
        (op, step), = node.items()
        if op == "Value":
            return ()
        var = step.get("left", {}).get("Var") if isinstance(step, dict) and isinstance(step.get("left"), dict) else None
        if op not in ("in", "==", "is") or var not in types or not types[var]:
            return None
        if op == "is":
            if isinstance(step.get("entity_type"), str) and step["entity_type"] not in types[var]:
                found.append(f"{var} is {step['entity_type']}")
            return None
        literals = _literals(step.get("right"))
        if not literals:
            return None
        reach = types[var] if op == "==" else {a for t in types[var] for a in ancestors.get(t, {t})}
        if all(t not in reach for t, _id in literals):
            t, i = literals[0]
            found.append(f"{var} {op} {t}::{json.dumps(i)}")
        return None

    for condition in body.get("conditions") or []:
        walk(condition, visit)
    return found


def membership_problems(est: Any, schema: cedarpy.Schema, files: dict[str, str], names: dict[str, str],
                        default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per condition the schema makes impossible."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    relations = entity_relations(schema)
    if not isinstance(static, dict) or relations is None:
        return []
    ancestors, applies = relations
    problems: list[str] = []
    for internal in sorted(static, key=policy_order):
        body = static[internal]
        actions = _actions(body.get("action"), applies) or []
        for text in impossible(body, ancestors, applies):
            var = text.split(" ", 1)[0]
            admitted = sorted({t for a in actions for t in applies[a][_SIDES[var]]})
            kinds = "; ".join(f"{t} (in {', '.join(sorted(ancestors.get(t, {t}) - {t})) or 'nothing'})"
                              for t in admitted)
            hint = " (an agent's own groups are principal.groups)" if "Group::" in text else ""
            problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                            f"`{text}` never holds: for {', '.join(actions)} the {var} is {kinds}, so the "
                            f"condition is always false{hint}")
    return problems
