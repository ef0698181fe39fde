"""Find comparisons of `context.time.hour` / `weekday` with values they never take.

`context.time.weekday` is the ISO weekday (1 = Monday … 7 = Sunday) and `hour` the UTC hour 0-23. A
weekend forbid written with the other common convention (0 = Sunday), `[0, 6].contains(context.time.weekday)`,
validates, since both sides are Longs, and is merely false on Sundays: the forbid silently does not fire.
The loader refuses a set that compares either attribute (`==`, `!=`, a set literal's `contains`) with a
value outside its range, like any other validation problem. Ordering comparisons (`hour < 24`) are left
alone: they are true or false as written, not a mistaken convention.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.authz.argnames import policy_order, walk

_TIME = {".": {"left": {"Var": "context"}, "attr": "time"}}
RANGES = {"hour": (0, 23), "weekday": (1, 7)}
_MEANING = "hour 0-23 UTC; weekday 1 = Monday ... 7 = Sunday, ISO"


def _field(node: Any) -> str | None:
    """`hour` or `weekday` when `node` reads `context.time.<that>`."""
    if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("."), dict):
        step = node["."]
        if step.get("left") == _TIME and step.get("attr") in RANGES:
            return str(step["attr"])
    return None


def _longs(node: Any) -> list[int]:
    """The Long literals of `node`: itself, or the items of a set literal."""
    items: list[Any] = node["Set"] if isinstance(node, dict) and isinstance(node.get("Set"), list) else [node]
    return [item["Value"] for item in items if isinstance(item, dict) and type(item.get("Value")) is int]


def time_misreads(est: Any) -> list[tuple[str, int]]:
    """(field, value) of each comparison in a policy's JSON form with a value the field never takes."""
    found: list[tuple[str, int]] = []

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        for op in ("==", "!=", "contains"):
            step = node.get(op)
            if isinstance(step, dict) and len(node) == 1:
                left, right = step.get("left"), step.get("right")
                for field, other in ((_field(left), right), (_field(right), left)):
                    if field is not None:
                        low, high = RANGES[field]
                        found.extend((field, v) for v in _longs(other) if not low <= v <= high)
        return () if "Value" in node else None  # a literal holds data, never an expression

    walk(est, visit)
    return found


def time_problems(est: Any, files: dict[str, str], names: dict[str, str], default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per out-of-range value a policy compares the time with."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    problems: list[str] = []
    for internal, body in sorted((static or {}).items(), key=lambda item: policy_order(item[0])):
        for field, value in sorted(set(time_misreads(body))):
            problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                            f"context.time.{field} compared with {value}, which it never is ({_MEANING})")
    return problems
