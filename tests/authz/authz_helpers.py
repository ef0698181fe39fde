"""Helpers for the authorization tests: principals, tools and call contexts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from gateway.context import Actor, CallContext, Principal, ToolInfo

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"


def shipped_schema_dir(tmp_path: Path, name: str, text: str) -> Path:
    """A policies directory of the shipped schema and one file, `{name}.cedar` holding `text`."""
    target = tmp_path / "policies"
    target.mkdir()
    shutil.copy(SHIPPED / "schema.cedarschema", target / "schema.cedarschema")
    (target / f"{name}.cedar").write_text(text)
    return target


def forbid_when(policy_id: str, condition: str) -> str:
    """One `call_tool` forbid, named `policy_id`, guarded by `condition`."""
    return f'@id("{policy_id}")\nforbid (principal, action == Action::"call_tool", resource)\nwhen {{ {condition} }};\n'

TOOLS = {
    "inventory/get_stock": ToolInfo("inventory", "get_stock", read_only=True, destructive=False, idempotent=True,
                                    open_world=False),
    "inventory/set_stock": ToolInfo("inventory", "set_stock", read_only=False, destructive=True, open_world=False),
    "payments/pay": ToolInfo("payments", "pay", read_only=False, destructive=True, sensitivity="confidential"),
    "hr/salaries": ToolInfo("hr", "salaries", read_only=True, destructive=False, sensitivity="restricted"),
    "mail/send": ToolInfo("mail", "send", read_only=False, destructive=False, leaves_org=True),
}


def agent(ident: str, chain: tuple[Actor, ...] = (), **attributes: Any) -> Principal:
    attributes.setdefault("tenant", "acme")
    return Principal(id=ident, issuer="https://idp.test", subject=ident, attributes=attributes, chain=chain)


def call(principal: Principal, tool: str, args: dict[str, Any] | None = None, **extra: Any) -> CallContext:
    info = TOOLS[tool]
    ctx = CallContext(method="tools/call", request_id=1, params={"name": info.name, "arguments": args or {}},
                      principal=principal, upstream=info.upstream, tool=info)
    ctx.extra.update(extra)
    return ctx


