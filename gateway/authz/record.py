"""What a decision-log line must carry so `customs policy replay` can re-decide it (`authz_input`).

The authorize stage leaves `snapshot_facts(...)` for the recorder, whose writer lays them out
(`decision_writer.snapshot_of`) under the key "authz_input" of each decision-log line; replay
rebuilds the principal, tool and facts from it. Arguments are kept only when the log includes them
(`decision_log.include_args`); without them, replaying argument-dependent policies sees `{}`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from gateway.authz.entities import RELEASED_AT, CallFacts, args_truncated
from gateway.context import Actor, CallContext, Principal, ToolInfo
from gateway.identity.chain import check_repeated_agents
from gateway.memo import Memo
from gateway.telemetry.decision_writer import TOOL_FIELDS, snapshot_of

assert TOOL_FIELDS == tuple(f.name for f in fields(ToolInfo) if f.name != "definition")  # the same facts, in order


def principal_part(principal: Principal) -> tuple[str, dict[str, Any], tuple[tuple[str, dict[str, Any]], ...]]:
    """Who decided-for: the principal and its chain (never the token)."""
    return (principal.id, dict(principal.attributes),
            tuple((a.id, dict(a.attributes)) for a in principal.chain))


def tool_part(tool: ToolInfo) -> tuple[Any, ...]:
    return tuple(getattr(tool, name) for name in TOOL_FIELDS)  # the definition is not a fact


class SnapshotParts:
    """The principal and tool parts of snapshots, built once per principal/tool object and shared
    (read-only: records are only serialised)."""

    def __init__(self) -> None:
        self.principal: Callable[[Principal], tuple[Any, ...]] = Memo(principal_part)
        self.tool: Callable[[ToolInfo], tuple[Any, ...]] = Memo(tool_part)


def snapshot_facts(principal: Principal, action: str, tool: ToolInfo, ctx: CallContext | None, environment: str,
                   *, parts: SnapshotParts | None = None) -> tuple[Any, ...]:
    """What a decision was made from, as plain values (`decision_writer.snapshot_of` lays them out): taken
    when the call is recorded, made the record's `authz_input` by the decision-log writer."""
    args = ctx.args if ctx is not None else None
    extra = ctx.extra if ctx is not None else {}
    return (
        action,
        (parts.principal if parts is not None else principal_part)(principal),
        (parts.tool if parts is not None else tool_part)(tool),
        # Kept even without args (and computed before any redaction): a call denied for truncated or
        # escaped arguments must replay as denied under the same policies.
        args_truncated(args),
        environment,
        bool(extra.get("args_contain_secret", False)),
        extra.get("task"),
        _decided_at(ctx),
        bool(ctx is not None and ctx.approval is not None and ctx.approval.outcome in ("approved", "reused")),
    )


def authz_input(principal: Principal, action: str, tool: ToolInfo, ctx: CallContext | None, environment: str,
                *, include_args: bool = False, parts: SnapshotParts | None = None) -> dict[str, Any]:
    """A JSON-safe snapshot of everything a decision was made from."""
    args = ctx.args if ctx is not None and include_args else None
    return snapshot_of(snapshot_facts(principal, action, tool, ctx, environment, parts=parts), args)


def _decided_at(ctx: CallContext | None) -> float:
    """When the recorded decision was made: the request's time, but a re-check's (the call was released, and
    the record holds the re-check's deny rather than the first approval_required) at its release."""
    if ctx is None:
        return time.time()
    if ctx.approval is not None and ctx.decision is not None and ctx.decision.outcome != "approval_required":
        return float(ctx.extra.get(RELEASED_AT, ctx.started_wall))
    return ctx.started_wall


def from_authz_input(data: dict[str, Any], issuer: Any = None) -> tuple[Principal, str, ToolInfo, CallFacts, bool]:
    """Inverse of authz_input; raises KeyError/TypeError/ValueError on a malformed snapshot.

    `issuer`: the decision record's own `issuer` (which every record has held, so records written before Agents
    carried it replay with it too); None when it names none: the Agents then have no `issuer` attribute.
    A chain naming one agent with two sets of attributes (a record of a gateway that decided it with the first
    set) raises RepeatedAgentError: the gateway refuses such a token at identify now."""
    if issuer is not None and not isinstance(issuer, str):
        raise TypeError("the record's issuer is not a string")
    p = data["principal"]
    chain = tuple(Actor(str(a["id"]), dict(a.get("attributes") or {})) for a in data.get("chain") or ())
    check_repeated_agents(str(p["id"]), dict(p.get("attributes") or {}), chain)
    principal = Principal(id=str(p["id"]), issuer=issuer or "", subject=str(p["id"]),
                          attributes=dict(p.get("attributes") or {}), chain=chain)
    tool = ToolInfo(**data["tool"])
    when = dt.datetime.fromisoformat(data["time"]) if data.get("time") else None
    facts = CallFacts(args=data.get("args") or {}, environment=str(data.get("environment", "")),
                      args_contain_secret=bool(data.get("args_contain_secret", False)), task=data.get("task"),
                      now=when, args_truncated=bool(data.get("args_truncated", False)))
    return principal, str(data.get("action", "call_tool")), tool, facts, bool(data.get("approved", False))
