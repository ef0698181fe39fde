"""Build Cedar requests from a call: entities, context and the bounded conversion of JSON arguments.

Everything here is a pure function of its inputs so it can be unit-tested and reused by the CLI
(`policy explain`, `policy test`, `policy replay`). JSON values become Cedar values as documented in
docs/policies.md ("Arguments as Cedar values"):

- null is dropped (an attribute whose value is null is absent; null array items are removed);
- booleans and strings pass through (strings longer than `max_str` are cut and `args_truncated` set);
- integers in the signed 64-bit range become Long; larger ones become their decimal digits as a String;
- floats with an integral value become Long (so `100.0` and `100` are the same to a policy); other finite
  floats become a Cedar `decimal` rounded half-even to 4 places (String if outside decimal's range);
  NaN and infinities become Strings;
- arrays become Sets (order and duplicates are lost); an array mixing value kinds becomes a Set of
  Strings holding each item's canonical JSON, so the set is homogeneous and typable;
- objects become records; keys Cedar's JSON format would read as escapes (`__entity`, `__extn`,
  `__expr`) are dropped so arguments can never smuggle an entity reference into a policy;
- past `max_depth`, `max_items` items per array or `max_keys` keys per object, the rest is dropped
  and `args_truncated` is set (a policy may forbid truncated arguments).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from gateway.authz.agentattrs import conform
from gateway.authz.argtypes import Type
from gateway.context import Actor, CallContext, Principal, ToolInfo, canonical_json
from gateway.identity.chain import check_repeated_agents, merged_attributes

LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
DECIMAL_LIMIT = Decimal("922337203685477.5807")
_RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
_QUANT = Decimal("0.0001")


@dataclass(frozen=True)
class Bounds:
    """Limits on the size of arguments turned into Cedar values."""

    max_depth: int = 8
    max_items: int = 64
    max_keys: int = 64
    max_str: int = 4096


DEFAULT_BOUNDS = Bounds()


class _Converter:
    """One conversion pass; remembers whether anything was cut."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.truncated = False

    def value(self, raw: Any, depth: int) -> Any:
        """The Cedar JSON form of `raw`, or None when it has no Cedar form (dropped)."""
        if raw is None:
            return None
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int):
            return raw if LONG_MIN <= raw <= LONG_MAX else str(raw)
        if isinstance(raw, float):
            return number(raw)
        if isinstance(raw, str):
            if len(raw) > self.bounds.max_str:
                self.truncated = True
                return raw[: self.bounds.max_str]
            return raw
        if depth >= self.bounds.max_depth:
            self.truncated = True
            return None
        if isinstance(raw, dict):
            return self.record(raw, depth + 1)
        if isinstance(raw, list | tuple | set | frozenset):
            return self.array(list(raw), depth + 1)
        return str(raw)  # anything else a caller hands us: its text, never an error

    def record(self, raw: dict[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in sorted(raw, key=str):
            name = str(key)
            if name in _RESERVED_KEYS:
                self.truncated = True
                continue
            if len(out) >= self.bounds.max_keys:
                self.truncated = True
                break
            converted = self.value(raw[key], depth)
            if converted is not None:
                out[name] = converted
        return out

    def array(self, raw: list[Any], depth: int) -> list[Any]:
        items = [item for item in raw if item is not None]
        if len(items) > self.bounds.max_items:
            self.truncated = True
            items = items[: self.bounds.max_items]
        converted = [c for c in (self.value(item, depth) for item in items) if c is not None]
        kinds = {_kind(c) for c in converted}
        if len(kinds) > 1:
            # Canonical JSON of nested mixed sets escapes again at every level: cut it like any string.
            return [self.cut(c if isinstance(c, str) else canonical_json(_plain(c))) for c in converted]
        return converted

    def cut(self, text: str) -> str:
        if len(text) > self.bounds.max_str:
            self.truncated = True
            return text[: self.bounds.max_str]
        return text


def _kind(value: Any) -> str:
    if isinstance(value, dict) and "__extn" in value:
        return "decimal"
    return type(value).__name__


def _plain(value: Any) -> Any:
    """Cedar JSON back to plain JSON (for the canonical text of a mixed array's items)."""
    if isinstance(value, dict):
        if "__extn" in value:
            # The only extension made here is a decimal, from a JSON number: its text is a number's
            # (`2.5`), as the item's own JSON is, not a string's (`"2.5000"`).
            return float(value["__extn"]["arg"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def number(raw: float) -> Any:
    """A float as Long (integral), decimal (4 places, half-even) or String (not representable)."""
    if not math.isfinite(raw):
        return str(raw)
    if raw.is_integer() and LONG_MIN <= raw <= LONG_MAX:
        return int(raw)
    try:
        dec = Decimal(repr(raw)).quantize(_QUANT, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        return repr(raw)
    if abs(dec) > DECIMAL_LIMIT:
        return repr(raw)
    return {"__extn": {"fn": "decimal", "arg": format(dec, "f")}}


def convert(raw: Any, bounds: Bounds = DEFAULT_BOUNDS) -> tuple[Any, bool]:
    """Convert any JSON value; returns (Cedar JSON value or None, truncated?)."""
    conv = _Converter(bounds)
    return conv.value(raw, 0), conv.truncated


def convert_args(args: Any, bounds: Bounds = DEFAULT_BOUNDS) -> tuple[dict[str, Any], bool]:
    """A call's arguments as a Cedar record (always a record; non-objects give an empty one)."""
    if not isinstance(args, dict):
        return {}, args is not None
    conv = _Converter(bounds)
    return conv.record(args, 1), conv.truncated


_SCALARS = (str, int, float, bool, type(None))


def args_truncated(args: Any, bounds: Bounds = DEFAULT_BOUNDS) -> bool:
    """`convert_args(args, bounds)[1]` without building the record, quickly for flat argument objects."""
    if isinstance(args, dict) and len(args) <= bounds.max_keys and all(type(v) in _SCALARS for v in args.values()):
        # Flat scalars: only a reserved key or an over-long string is cut (numbers never are).
        return any(type(v) is str and len(v) > bounds.max_str for v in args.values()) or any(
            str(k) in _RESERVED_KEYS for k in args)
    return convert_args(args, bounds)[1]


def totals(raw: Any) -> dict[str, int]:
    """Task totals as Longs, rounded up: limits are upper bounds, so rounding up is the safe direction."""
    out: dict[str, int] = {}
    if not isinstance(raw, dict):
        return out
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[str(key)] = max(LONG_MIN, min(LONG_MAX, math.ceil(value)))
    return out


def task_record(raw: Any) -> dict[str, Any] | None:
    """context.task from ctx.extra["task"]: {calls, totals, seen_tools, not_counted}, each optional."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    calls = raw.get("calls")
    if isinstance(calls, int) and not isinstance(calls, bool):
        out["calls"] = max(LONG_MIN, min(LONG_MAX, calls))
    if "totals" in raw:
        out["totals"] = totals(raw.get("totals"))
    seen = raw.get("seen_tools")
    if isinstance(seen, list | tuple | set | frozenset):
        out["seen_tools"] = sorted({str(s) for s in seen})
    not_counted = raw.get("not_counted")
    if isinstance(not_counted, list | tuple | set | frozenset):
        out["not_counted"] = sorted({str(s) for s in not_counted})
    return out


def _uid(kind: str, ident: str) -> dict[str, str]:
    return {"type": kind, "id": ident}


def agent_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Principal/actor attributes (from claims or the agent registry) as Cedar attributes.

    Lists become Sets of every item, not the first `Bounds.max_items` as arguments do: a forbid on
    membership (`principal.roles.contains("contractor")`) must not miss an item listed late."""
    record, _ = convert_args(attributes)
    for name, value in attributes.items():
        # Claims give lists of strings only (identity/chain.py); others (a policy test's inline attributes)
        # convert like arguments.
        if isinstance(value, list | tuple | set | frozenset) and all(isinstance(item, str) for item in value):
            record[name] = sorted(set(value))
    groups = attributes.get("groups")
    if isinstance(groups, list | tuple | set | frozenset):
        record["groups"] = sorted({str(g) for g in groups})
    elif isinstance(groups, str):
        record["groups"] = [groups]
    return record


def agent_entity(ident: str, attributes: dict[str, Any], declared: dict[str, Type] | None = None,
                 issuer: str = "") -> dict[str, Any]:
    """An Agent with its attributes fitted to the schema's `declared` types (raises AttributeTypeError), and the
    `issuer` that vouched for it (none when `issuer` is empty: a replayed record that names no issuer)."""
    record = agent_attributes(attributes)
    # Only the verified issuer is the issuer: an `issuer` a claim mapping or anonymous_attributes produced is not.
    record.pop("issuer", None)
    attrs = conform(ident, record, declared)
    if issuer:
        attrs["issuer"] = issuer
    tenant = attrs.get("tenant")
    parents = [_uid("Tenant", tenant)] if isinstance(tenant, str) and tenant else []
    return {"uid": _uid("Agent", ident), "attrs": attrs, "parents": parents}


def tool_entity(tool: ToolInfo) -> dict[str, Any]:
    attrs = {"read_only": tool.read_only, "destructive": tool.destructive, "idempotent": tool.idempotent,
             "open_world": tool.open_world, "sensitivity": tool.sensitivity, "leaves_org": tool.leaves_org,
             "upstream": tool.upstream, "name": tool.name}
    return {"uid": _uid("Tool", tool.cedar_id), "attrs": attrs, "parents": [_uid("Server", tool.upstream)]}


def members(principal: Principal) -> list[Actor]:
    """Everyone who must be permitted: the principal first, then each actor of its chain (deduplicated)."""
    out = {principal.id: Actor(principal.id, dict(principal.attributes))}
    for actor in principal.chain:
        first = out.get(actor.id)
        # An agent named again (A → B → A, or a bare `sub` naming the principal): one entity with every attribute
        # given (identify refused the token if two occurrences conflict).
        out[actor.id] = actor if first is None else Actor(actor.id, merged_attributes(first.attributes,
                                                                                       actor.attributes))
    return list(out.values())


def member_ids(principal: Principal) -> list[str]:
    """The ids of `members(principal)`, without copying anyone's attributes (once per decision)."""
    if not principal.chain:
        return [principal.id]
    return list(dict.fromkeys([principal.id, *(a.id for a in principal.chain)]))


def entities(principal: Principal, tool: ToolInfo, declared: dict[str, Type] | None = None) -> list[dict[str, Any]]:
    """The per-call entity set: every chain member as an Agent (with its tenant) plus the tool and server.

    Every member carries the principal's issuer: the token's issuer verified the whole `act` chain (the
    identity code reads no issuer of an actor's own), so it is the one that vouches for each actor too.
    An agent named twice with different attributes raises RepeatedAgentError (a ValueError: the decision denies):
    identify refuses such a token, so only a principal built elsewhere can get here with one."""
    if principal.chain:
        check_repeated_agents(principal.id, principal.attributes, principal.chain)
    found: list[dict[str, Any]] = [agent_entity(m.id, m.attributes, declared, principal.issuer)
                                   for m in members(principal)]
    tenants = {p["id"] for e in found for p in e["parents"]}
    found.extend({"uid": _uid("Tenant", t), "attrs": {}, "parents": []} for t in sorted(tenants))
    found.append(tool_entity(tool))
    found.append({"uid": _uid("Server", tool.upstream), "attrs": {}, "parents": []})
    return found


@dataclass(frozen=True)
class CallFacts:
    """What the context is made of, separated from CallContext so the CLI and replay can supply it."""

    args: Any = None
    environment: str = ""
    args_contain_secret: bool = False
    task: Any = None
    now: dt.datetime | None = None
    args_truncated: bool = False  # replay without logged args: the recorded flag stands in for them
    at: float | None = None  # the call's wall-clock time, made a datetime only if a policy reads context.time
    # Policy tests only: context attributes given outright (Cedar JSON) where they are otherwise derived from
    # the principal (tenant, chain, chain_depth), so a case can state a context no token would produce.
    overrides: tuple[tuple[str, Any], ...] = ()

    def when(self) -> dt.datetime:
        if self.now is not None:
            return self.now.astimezone(dt.UTC)
        return dt.datetime.fromtimestamp(self.at, dt.UTC) if self.at is not None else dt.datetime.now(dt.UTC)


# CallContext.extra key: the wall-clock time a held call was released and re-checked (set by the authorize stage).
RELEASED_AT: Final = "released_wall"


def facts_from_ctx(ctx: CallContext | None, environment: str) -> CallFacts:
    if ctx is None:
        return CallFacts(environment=environment)
    # A released call runs now, so its re-check sees the time of release: a forbid on context.time must not
    # pass a call approved outside its window because the request came inside it.
    at = ctx.started_wall if ctx.approval is None else ctx.extra.get(RELEASED_AT, ctx.started_wall)
    return CallFacts(args=ctx.args, environment=environment,
                     args_contain_secret=bool(ctx.extra.get("args_contain_secret", False)),
                     task=ctx.extra.get("task"), at=at)


def context(principal: Principal, facts: CallFacts, approval: str, bounds: Bounds = DEFAULT_BOUNDS,
            keys: frozenset[str] | None = None) -> dict[str, Any]:
    """The Cedar context of call_tool/list_tools/read_resource/get_prompt (see docs/policies.md).

    `keys`: only these attributes (those the loaded policies name; None: all of them).
    """
    want = (lambda key: True) if keys is None else keys.__contains__
    out: dict[str, Any] = {}
    if want("args") or want("args_truncated"):
        args, truncated = convert_args(facts.args, bounds)
        if want("args"):
            out["args"] = args
        if want("args_truncated"):
            out["args_truncated"] = truncated or facts.args_truncated
    if want("environment"):
        out["environment"] = facts.environment
    if want("tenant"):
        out["tenant"] = principal.tenant or ""
    if want("chain"):
        out["chain"] = sorted({a.id for a in principal.chain})
    if want("chain_depth"):
        out["chain_depth"] = len(principal.chain)
    if want("approval"):
        out["approval"] = approval
    if want("time"):
        now = facts.when()
        out["time"] = {"hour": now.hour, "weekday": now.isoweekday()}
    if want("args_contain_secret"):
        out["args_contain_secret"] = facts.args_contain_secret
    task = task_record(facts.task) if want("task") else None
    if task is not None:
        out["task"] = task
    for key, value in facts.overrides:
        if want(key):
            out[key] = value
    return out


def request(member: str, action: str, tool: ToolInfo, ctx: dict[str, Any]) -> dict[str, Any]:
    return {"principal": _uid("Agent", member), "action": _uid("Action", action),
            "resource": _uid("Tool", tool.cedar_id), "context": ctx}


def approval_entities(user_id: str, groups: list[str], approval: dict[str, Any]) -> list[dict[str, Any]]:
    """Entities of an `approve` request: the User in its Groups, and the pending call as an Approval."""
    groups = sorted({str(g) for g in groups})
    args, _ = convert_args(approval.get("args"))
    attrs = {"upstream": str(approval.get("upstream", "")), "tool": str(approval.get("tool", "")),
             "args": args, "requester": str(approval.get("requester", "")),
             "chain": sorted({str(c) for c in approval.get("chain") or ()})}
    found: list[dict[str, Any]] = [
        {"uid": _uid("User", user_id), "attrs": {"groups": groups}, "parents": [_uid("Group", g) for g in groups]},
        {"uid": _uid("Approval", str(approval.get("id", ""))), "attrs": attrs, "parents": []},
    ]
    found.extend({"uid": _uid("Group", g), "attrs": {}, "parents": []} for g in groups)
    return found


def approval_request(user_id: str, approval: dict[str, Any], chain: Sequence[str] = ()) -> dict[str, Any]:
    """`chain`: the actors of the approver's token (its `act` claims): someone else deciding as this person."""
    return {"principal": _uid("User", user_id), "action": _uid("Action", "approve"),
            "resource": _uid("Approval", str(approval.get("id", ""))),
            "context": {"chain": sorted(set(chain)), "chain_depth": len(chain)}}
