"""Find arguments a policy reads from `context.args` that the schema's `Args` record does not name.

Every `Args` attribute is optional (tools differ), so policies read arguments behind `has`, and Cedar's
validator types `context.args has amout` on a record without `amout` as always false, not as an error:
a misspelled guard validates, never fires, and a forbid written with it silently stops forbidding. The
loader therefore refuses a set that names an argument `Args` lacks, like any other validation problem.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import cedarpy

_ARGS = {".": {"left": {"Var": "context"}, "attr": "args"}}  # `context.args` (and `context["args"]`) in EST


def schema_args(schema: cedarpy.Schema) -> frozenset[str] | None:
    """The attribute names of the schema's top-level `Args` type; None when it has none (no check then).

    cedarpy has no schema-to-JSON call, so this reads Cedar's own canonical rendering (`str(schema)`),
    not the file: there a top-level type starts in column 0 and each of its attributes starts a line
    indented by exactly two spaces (nested records are indented further), quoted when not an identifier.
    """
    lines = str(schema).splitlines()
    if "type Args = {};" in lines:
        return frozenset()
    if "type Args = {" not in lines:
        return None
    names: set[str] = set()
    for line in lines[lines.index("type Args = {") + 1:]:
        if line == "};":
            return frozenset(names)
        if not line.startswith("  ") or line[2:3] in " }":
            continue  # inside, or the end of, a nested record
        if line[2] == '"':
            try:
                name, _end = json.JSONDecoder().raw_decode(line, 2)
            except ValueError:
                return None  # an escape JSON reads differently: no check rather than a false alarm
            names.add(str(name))
        else:
            names.add(line[2:].split(":", 1)[0].rstrip("?").strip())
    return None


def args_reads(est: Any) -> set[str]:
    """The names a policy (its JSON form) reads directly on `context.args`: by `.attr`, `["attr"]` or `has`."""
    found: set[str] = set()
    stack: list[Any] = [est]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if len(node) == 1:
            (op, step), = node.items()
            if op == "Value":
                continue  # a literal holds data, never an expression
            if op == "Record" and isinstance(step, dict):
                stack.extend(step.values())  # field names are data, never operators
                continue
            if op in (".", "has") and isinstance(step, dict) and step.get("left") == _ARGS \
                    and isinstance(step.get("attr"), str):
                found.add(step["attr"])
        stack.extend(node.values())
    return found


def _order(internal: str) -> int:
    digits = internal[len("policy"):]
    return int(digits) if digits.isdigit() else 0


def unknown_args(est: Any, schema: cedarpy.Schema, files: dict[str, str], names: dict[str, str],
                 default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per argument a policy reads that `Args` does not name."""
    known = schema_args(schema)
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    if known is None or not isinstance(static, dict):
        return []
    problems: list[str] = []
    for internal in sorted(static, key=_order):
        for attr in sorted(args_reads(static[internal]) - known):
            close = difflib.get_close_matches(attr, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                            f"argument {attr!r} read on context.args is not in the schema's Args record{hint}")
    return problems
