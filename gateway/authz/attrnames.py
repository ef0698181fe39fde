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
from typing import Any

import cedarpy

from gateway.authz.argnames import ARGS_PATH, TOTALS_PATH, attr_reads, policy_order, schema_args, schema_totals
from gateway.authz.argtypes import Type, declared_attributes


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
    skip = {path for path, known in ((ARGS_PATH, schema_args(schema)), (TOTALS_PATH, schema_totals(schema)))
            if known is not None}
    problems: list[str] = []
    for internal in sorted(static, key=policy_order):
        for base, attr in sorted(attr_reads(static[internal], ("has",))):
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
