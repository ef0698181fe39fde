"""Make an agent's attributes (principal or delegation actor) fit the types the schema declares for `Agent`.

Attributes come from token claims and the `agents:` registry, which know nothing of the schema: a claim
`level: 1` is a Long, a registry `clearance: "3"` a String (config values are Strings). Cedar compares
values of different types as merely unequal, so `principal.level == "1"` on the Long 1 is false and a
forbid written for the declared String silently never fires. A value is therefore converted where the
conversion loses nothing (a Long or Bool to its JSON text for a String; the canonical text of a Long or
Bool, `3`, `-1`, `true`, `false`, back to it; a single value to a one-element Set), and any other value of
another type than declared raises `AttributeTypeError`, which denies the decision (as mistyped arguments
do, see argtypes). Attributes the schema does not declare are left alone: no validated policy can read them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.authz.argtypes import Type, describe, mismatches, render

LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
_LONG_TEXT = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_MISSING = object()


class AttributeTypeError(ValueError):
    """An agent attribute has another type than the schema declares and cannot be converted losslessly."""


def _scalar(value: Any, kind: str) -> Any:
    """`value` as the declared scalar kind, or _MISSING when no lossless conversion exists."""
    if kind == "String":
        if type(value) is str:
            return value
        if type(value) is bool:
            return "true" if value else "false"
        if type(value) is int:
            return str(value)
    elif kind == "Long":
        if type(value) is int:
            return value
        if type(value) is str and _LONG_TEXT.fullmatch(value) and LONG_MIN <= int(value) <= LONG_MAX:
            return int(value)
    elif kind == "Bool":
        if type(value) is bool:
            return value
        if value in ("true", "false") and type(value) is str:
            return value == "true"
    return _MISSING


def _fit(value: Any, typ: Type) -> Any:
    kind, inner = typ
    if kind in ("String", "Long", "Bool"):
        return _scalar(value, kind)
    if kind == "set" and inner[0] in ("String", "Long", "Bool"):
        items = [_scalar(item, inner[0]) for item in (value if type(value) is list else [value])]
        return _MISSING if any(item is _MISSING for item in items) else sorted(set(items), key=str)
    found: list[str] = []
    mismatches(value, typ, (), found)  # records, decimals, entities: kept only as they are
    return _MISSING if found else value


def conform(ident: str, attrs: dict[str, Any], declared: dict[str, Type] | None) -> dict[str, Any]:
    """`attrs` (Cedar JSON values) converted to the declared types; raises AttributeTypeError naming the first
    attribute that cannot be. `declared` None: the schema's types are unknown, nothing is converted."""
    if not declared:
        return attrs
    out = dict(attrs)
    for name, value in attrs.items():
        typ = declared.get(name)
        if typ is None or typ[0] == "any":
            continue
        fitted = _fit(value, typ)
        if fitted is _MISSING:
            raise AttributeTypeError(f"attribute type mismatch: Agent::{json.dumps(ident)}.{name} is "
                                     f"{describe(value)}, the schema declares {render(typ)}")
        out[name] = fitted
    return out
