"""Find `Tool`, `Server`, `Agent` and `Tenant` literals that name nothing the gateway ever decides.

Every tool (prompt, resource) is `Tool::"<upstream>/<name>"` in `Server::"<upstream>"`, and an upstream's name
is `[a-z0-9_-]+` (the config refuses others). `Tool::"inventory__get_stock"`, the name an agent sees on the
aggregated `/mcp`, `Tool::"get_stock"` or `Server::"Inventory"` validate all the same (an entity id is any
string) and match no request: a forbid naming one silently never fires. So do an `Agent` whose id claims to be a
SPIFFE ID but is not a valid one (such a token `sub` is refused at identify) and `Tenant::""` (an empty tenant is
none). The loader refuses them, wherever in a policy they appear (scope or condition).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.authz.argnames import policy_order, walk
from gateway.spiffeid import InvalidSpiffeId, is_spiffe_uri, parse_spiffe_id

_KINDS = ("Tool", "Server", "Agent", "Tenant")
# The config's upstream names (gateway.config.upstreams.NAME_RE, equal by a test): not imported, since the config
# package brings pydantic and yaml, and `customs policy validate` loads policies without the gateway runtime.
UPSTREAM_NAME = re.compile(r"[a-z0-9_-]+")


def _named(value: Any) -> set[tuple[str, str]]:
    """Every (type, id) of a `_KINDS` entity reference in a policy's JSON form (scope or condition)."""
    found: set[tuple[str, str]] = set()

    def visit(node: dict[str, Any]) -> None:
        if node.get("type") in _KINDS and isinstance(node.get("id"), str):
            found.add((node["type"], node["id"]))

    walk(value, visit)
    return found


def _wrong(kind: str, ident: str) -> str | None:

    if kind == "Agent":
        if not is_spiffe_uri(ident):
            return None  # a token's `sub` may be any non-empty string
        try:
            parse_spiffe_id(ident)
        except InvalidSpiffeId as exc:  # such a `sub` is refused at identify (401)
            return f"names no agent: a subject claiming to be a SPIFFE ID must be a valid one ({exc})"
        return None
    if kind == "Tenant":
        return None if ident else "names no tenant (an empty tenant claim is no tenant)"
    if kind == "Server":
        return None if UPSTREAM_NAME.fullmatch(ident) else "names no upstream (a name of [a-z0-9_-]+)"
    upstream, slash, name = ident.partition("/")
    if slash and name and UPSTREAM_NAME.fullmatch(upstream):
        return None
    return ("names no tool (a tool is Tool::\"<upstream>/<tool>\", the upstream's own tool name; the agent's "
            "'upstream__tool' on /mcp is not it)")


def entity_problems(est: Any, files: dict[str, str], names: dict[str, str], default_file: str) -> list[str]:
    """`file: policy 'id': ...` problems, one per entity literal no request can match."""
    static = est.get("staticPolicies") if isinstance(est, dict) else None
    problems: list[str] = []
    for internal, body in sorted((static or {}).items(), key=lambda item: policy_order(item[0])):
        found = _named({k: v for k, v in body.items() if k != "annotations"} if isinstance(body, dict) else body)
        for kind, ident in sorted(found):
            why = _wrong(kind, ident)
            if why is not None:
                problems.append(f"{files.get(internal, default_file)}: policy {names.get(internal, internal)!r}: "
                                f"{kind}::{_quoted(ident)} {why}")
    return problems


def _quoted(ident: str) -> str:
    return '"' + ident.replace("\\", "\\\\").replace('"', '\\"') + '"'
