"""Find comparisons of `context.approval` and `resource.sensitivity` with strings they never are.

`context.approval` is "none" or "granted" and `resource.sensitivity` one of the config's four labels, but both are
Strings in the schema, so `resource.sensitivity == "Restricted"` or `context.approval == "approved"` validates and
is merely false: a forbid written with it silently does not fire. The loader refuses a set that compares either
(`==`, `!=`, a set literal's `contains`) with another string, as `timelits` does for the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.authz.argnames import policy_order, walk

_READS = {("context", "approval"): ("none", "granted")}


# The config's labels (gateway.config.upstreams.Sensitivity, equal by a test): not imported, since the config package
# brings pydantic and yaml, and `customs policy validate` loads policies without the gateway runtime.
SENSITIVITIES = ("public", "internal", "confidential", "restricted")


def _fields() -> dict[tuple[str, str], tuple[str, ...]]:
    return {**_READS, ("resource", "sensitivity"): SENSITIVITIES}


def _field(node: Any, fields: dict[tuple[str, str], tuple[str, ...]]) -> tuple[str, str] | None:
    """("context", "approval") or ("resource", "sensitivity") when `node` reads it."""
    step = node.get(".") if isinstance(node, dict) and len(node) == 1 else None
    if isinstance(step, dict) and isinstance(step.get("left"), dict):
        key = (step["left"].get("Var"), step.get("attr"))
        if key in fields:
            return key
    return None


def _strings(node: Any) -> list[str]:
    """The String literals of `node`: itself, or the items of a set literal."""
    items: list[Any] = node["Set"] if isinstance(node, dict) and isinstance(node.get("Set"), list) else [node]
    return [item["Value"] for item in items if isinstance(item, dict) and isinstance(item.get("Value"), str)]


def value_misreads(est: Any) -> list[tuple[tuple[str, str], str]]:
    """(("context", "approval"), value) of each comparison in a policy's JSON form with a value it never takes."""
    fields = _fields()
    found: list[tuple[tuple[str, str], str]] = []

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        for op in ("==", "!=", "contains"):
            step = node.get(op)
            if isinstance(step, dict) and len(node) == 1:
                left, right = step.get("left"), step.get("right")
                for field, other in ((_field(left, fields), right), (_field(right, fields), left)):
                    if field is not None:
                        found.extend((field, v) for v in _strings(other) if v not in fields[field])
        return () if "Value" in node else None  # a literal holds data, never an expression

    walk(est, visit)
    return found


def value_problems(est: Any, files: dict[str, str], names: dict[str, str], default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per string a policy compares approval or sensitivity with in vain."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    fields = _fields()
    problems: list[str] = []
    for internal, body in sorted((static or {}).items(), key=lambda item: policy_order(item[0])):
        for field, value in sorted(set(value_misreads(body))):
            known = fields[field]
            problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                            f"{'.'.join(field)} compared with {value!r}, which it never is (it is one of "
                            f"{', '.join(repr(k) for k in known)})")
    return problems
