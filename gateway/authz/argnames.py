"""Find arguments a policy reads from `context.args` that the schema's `Args` record does not name.

Every `Args` attribute is optional (tools differ), so policies read arguments behind `has`, and Cedar's
validator types `context.args has amout` on a record without `amout` as always false, not as an error:
a misspelled guard validates, never fires, and a forbid written with it silently stops forbidding. The
loader therefore refuses a set that names an argument `Args` lacks, like any other validation problem,
and likewise a task total (`context.task.totals.<name>`) the schema's `Task` type's `totals` lacks.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from typing import Any

import cedarpy

_ARGS = {".": {"left": {"Var": "context"}, "attr": "args"}}  # `context.args` (and `context["args"]`) in EST
_TOTALS = {".": {"left": {".": {"left": {"Var": "context"}, "attr": "task"}}, "attr": "totals"}}


def _names(lines: list[str], start: int, indent: int) -> frozenset[str] | None:
    """The attribute names of the record whose attributes start at lines[start], each line indented by exactly
    `indent` spaces (nested records further); None when an escape would be read differently."""
    pad = " " * indent
    names: set[str] = set()
    for line in lines[start:]:
        if not line.startswith(pad):
            return frozenset(names)  # the record's closing brace, at a smaller indent
        if line[indent] in " }":
            continue  # inside, or the end of, a nested record
        if line[indent] == '"':
            try:
                name, _end = json.JSONDecoder().raw_decode(line, indent)
            except ValueError:
                return None  # an escape JSON reads differently: no check rather than a false alarm
            names.add(str(name))
        else:
            names.add(line[indent:].split(":", 1)[0].rstrip("?").strip())
    return None


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
    return _names(lines, lines.index("type Args = {") + 1, 2)


def schema_totals(schema: cedarpy.Schema) -> frozenset[str] | None:
    """The names of the `totals` record in the schema's top-level `Task` type; None when there is none."""
    lines = str(schema).splitlines()
    if "type Task = {" not in lines:
        return None
    start = lines.index("type Task = {") + 1
    for i, line in enumerate(lines[start:], start):
        if not line.startswith("  "):
            return None  # past the end of Task
        head, _, rest = line[2:].partition(":")
        if head.strip('"?') == "totals":
            if rest.replace(" ", "").rstrip(",") == "{}":  # Cedar renders an empty record `{  }`
                return frozenset()
            return _names(lines, i + 1, 4) if rest.strip() == "{" else None
    return None


def walk(est: Any, visit: Callable[[dict[str, Any]], Iterable[Any] | None]) -> None:
    """Call `visit` on every object of a policy's JSON form, depth first (lists are looked into). `visit` returns
    what to go on into (None: all the object's values; empty: nothing below it, e.g. a literal)."""
    stack: list[Any] = [est]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            children = visit(node)
            stack.extend(node.values() if children is None else children)


def args_reads(est: Any, base: Any = None) -> set[str]:
    """The names a policy (its JSON form) reads directly on `context.args` (or on `base`, another expression in
    its JSON form): by `.attr`, `["attr"]` or `has`."""
    base = _ARGS if base is None else base
    found: set[str] = set()

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        if len(node) == 1:
            (op, step), = node.items()
            if op == "Value":
                return ()  # a literal holds data, never an expression
            if op == "Record" and isinstance(step, dict):
                return step.values()  # field names are data, never operators
            if op in (".", "has") and isinstance(step, dict) and step.get("left") == base \
                    and isinstance(step.get("attr"), str):
                found.add(step["attr"])
        return None

    walk(est, visit)
    return found


def total_readers(est: Any) -> dict[str, tuple[str, set[str]]]:
    """Internal policy id -> (effect, the task totals it reads on `context.task.totals`), for each that reads one."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    out: dict[str, tuple[str, set[str]]] = {}
    for internal, body in (static or {}).items():
        names = args_reads(body, _TOTALS)
        if names:
            out[internal] = (str(body.get("effect")), names)
    return out


def _order(internal: str) -> int:
    digits = internal[len("policy"):]
    return int(digits) if digits.isdigit() else 0


def unknown_args(est: Any, schema: cedarpy.Schema, files: dict[str, str], names: dict[str, str],
                 default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per argument a policy reads that `Args` does not name, and per
    task total it reads that `Task`'s `totals` does not name."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    if not isinstance(static, dict):
        return []
    checks = [(known, base, what) for known, base, what in (
        (schema_args(schema), _ARGS, ("argument", "context.args", "Args record")),
        (schema_totals(schema), _TOTALS, ("total", "context.task.totals", "Task totals record")))
        if known is not None]
    problems: list[str] = []
    for internal in sorted(static, key=_order):
        for known, base, (noun, where, record) in checks:
            for attr in sorted(args_reads(static[internal], base) - known):
                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                                f"{noun} {attr!r} read on {where} is not in the schema's {record}{hint}")
    return problems
