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

ARGS_PATH = ("context", "args")  # `context.args` (and `context["args"]`), as attr_reads names a base
TOTALS_PATH = ("context", "task", "totals")
_VARS = ("context", "principal", "resource")


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


def _path(node: Any) -> tuple[str, ...] | None:
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


def attr_reads(est: Any, ops: tuple[str, ...] = (".", "has")) -> set[tuple[tuple[str, ...], str]]:
    """(base path, attribute) of each read in a policy's JSON form by `ops` (`.attr` and `["attr"]` are ".", `has`
    is "has") on context, principal or resource or an attribute path below one: `context.task has seen_tools` →
    (("context", "task"), "seen_tools")."""
    found: set[tuple[tuple[str, ...], str]] = set()

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        if len(node) == 1:
            (op, step), = node.items()
            if op == "Value":
                return ()  # a literal holds data, never an expression
            if op == "Record" and isinstance(step, dict):
                return step.values()  # field names are data, never operators
            if op in ops and isinstance(step, dict) and isinstance(step.get("attr"), str):
                base = _path(step.get("left"))
                if base is not None:
                    found.add((base, step["attr"]))
        return None

    walk(est, visit)
    return found


def args_reads(est: Any, base: tuple[str, ...] = ARGS_PATH) -> set[str]:
    """The names a policy (its JSON form) reads directly on `context.args` (or on `base`, another attribute path):
    by `.attr`, `["attr"]` or `has`."""
    return {attr for path, attr in attr_reads(est) if path == base}


def total_readers(est: Any) -> dict[str, tuple[str, set[str]]]:
    """Internal policy id -> (effect, the task totals it reads on `context.task.totals`), for each that reads one."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    out: dict[str, tuple[str, set[str]]] = {}
    for internal, body in (static or {}).items():
        names = args_reads(body, TOTALS_PATH)
        if names:
            out[internal] = (str(body.get("effect")), names)
    return out


def policy_order(internal: str) -> int:
    """Sort key of Cedar's internal policy ids (policy0, policy1, …, policy10): the order of the files' text."""
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
        (schema_args(schema), ARGS_PATH, ("argument", "context.args", "Args record")),
        (schema_totals(schema), TOTALS_PATH, ("total", "context.task.totals", "Task totals record")))
        if known is not None]
    problems: list[str] = []
    for internal in sorted(static, key=policy_order):
        for known, base, (noun, where, record) in checks:
            for attr in sorted(args_reads(static[internal], base) - known):
                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                                f"{noun} {attr!r} read on {where} is not in the schema's {record}{hint}")
    return problems
