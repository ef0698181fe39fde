"""Find attributes a policy tests with `has` that the schema declares nowhere: on `context` and the records in it,
on `principal` and on `resource`.

Cedar's validator types `principal has clearence`, `context.task has seen_tool` or `context has enviroment` on a
type without that attribute as always false, not as an error: a misspelled guard validates, never holds, and a
forbid written with it silently stops forbidding (`argnames` does this for `context.args` and a `type Task`'s
totals). An attribute read without a guard is already a validation error of Cedar's own, so only `has` is looked
at. `principal` and `resource` are checked against the attributes of every entity type (a policy may apply to
several), a context path against the record the schema gives it in any action; a path typed otherwise (an
entity, an undeclared name) is not checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import cedarpy

from gateway.authz.argnames import schema_args, schema_totals, walk
from gateway.authz.argtypes import Type, declared_attributes

_VARS = ("context", "principal", "resource")


def _base(node: Any) -> tuple[str, ...] | None:
    """`context.task` → ("context", "task"), `principal` → ("principal",); None for anything else."""
    names: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        if node.get("Var") in _VARS:
            return (str(node["Var"]), *names[::-1])
        step = node.get(".")
        if not isinstance(step, dict) or not isinstance(step.get("attr"), str):
            return None
        names.append(step["attr"])
        node = step.get("left")
    return None


def guarded_reads(est: Any) -> set[tuple[tuple[str, ...], str]]:
    """(base path, attribute) of each `has` test in a policy's JSON form on context, principal or resource."""
    found: set[tuple[tuple[str, ...], str]] = set()

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        if len(node) == 1:
            (op, step), = node.items()
            if op == "Value":
                return ()  # a literal holds data, never an expression
            if op == "Record" and isinstance(step, dict):
                return step.values()  # field names are data, never operators
            if op == "has" and isinstance(step, dict) and isinstance(step.get("attr"), str):
                base = _base(step.get("left"))
                if base is not None:
                    found.add((base, step["attr"]))
        return None

    walk(est, visit)
    return found


def _context_names(contexts: dict[str, Type], path: tuple[str, ...]) -> frozenset[str] | None:
    """The attribute names of the record at `context.<path>` in any action; None when some action types it as no
    record, or none has it (its parent's read is the problem then)."""
    names: set[str] = set()
    found = False
    for typ in contexts.values():
        for name in path:
            fields = typ[1] if typ[0] == "record" else {}
            if name not in fields:
                break
            typ = fields[name]
        else:
            if typ[0] != "record":
                return None
            names.update(typ[1])
            found = True
    return frozenset(names) if found else None


def unknown_attrs(est: Any, schema: cedarpy.Schema, files: dict[str, str], names: dict[str, str],
                  default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per attribute a policy tests with `has` that the schema declares
    nowhere (what `argnames` checks, `context.args` against a `type Args` and a `type Task`'s totals, is left to it)."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    declared = declared_attributes(schema)
    if not isinstance(static, dict) or declared is None:
        return []
    contexts, entity_names = declared
    skip = {path for path, known in ((("context", "args"), schema_args(schema)),
                                     (("context", "task", "totals"), schema_totals(schema))) if known is not None}
    problems: list[str] = []
    for internal in sorted(static, key=lambda i: int(i[6:]) if i[6:].isdigit() else 0):
        for base, attr in sorted(guarded_reads(static[internal])):
            if base in skip or (base[0] != "context" and len(base) > 1):
                continue
            known = entity_names if base[0] != "context" else _context_names(contexts, base[1:])
            if known is None or attr in known:
                continue
            close = difflib.get_close_matches(attr, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = "by any entity type" if base[0] != "context" else "in any action's context"
            problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                            f"attribute {attr!r} read on {'.'.join(base)} is not declared {where} in the schema, "
                            f"so the `has` test is always false{hint}")
    return problems
