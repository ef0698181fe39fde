"""Decide one request against one loaded policy set: three outcomes, every chain member, errors deny.

- allow: every member of the chain (the principal and each actor) is permitted with `approval == "none"`;
- approval_required: some member is denied with "none", but all are permitted with `approval == "granted"`;
- deny: otherwise, and whenever Cedar reports an evaluation error (a forbid that errors must not
  silently stop forbidding).
The determining policies are named by their `@id`: for allow the permits, for deny the forbids that
fired, for approval_required the forbids lifted by approval plus the permits that then applied.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import cedarpy
import orjson
from cedarpy import _internal

from gateway.authz import entities as E
from gateway.authz.argnames import policy_order
from gateway.authz.argtypes import Type, check
from gateway.authz.policyset import LoadedPolicies, prune
from gateway.context import Decision, Outcome, Principal, ToolInfo


class EntityCache:
    """Parsed entity sets by their JSON text (bounded LRU): the same agent calling the same tool skips the parse.

    It also remembers whole decisions by their exact inputs. Cedar evaluation is a pure function of
    (policy set, entities, request, context), so a decision stored under the exact JSON of all of them
    (policy version included) is the one Cedar would reach again: agents repeat identical calls, and
    policies that read no per-call context attribute decide every call of an agent on a tool alike.
    """

    def __init__(self, size: int = 1024, results: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[str, cedarpy.Entities] = OrderedDict()
        # By the identity of the (principal, tool) objects: a cached token and a catalog entry are the
        # same objects call after call, so the entity JSON need not even be rebuilt. The entry holds
        # both objects, so their ids cannot be reused while it exists.
        # The schema's Agent types (one object per loaded set; enforced and shadow sets may differ) are part of the key.
        self._by_identity: OrderedDict[tuple[int, int, int], tuple[Principal, ToolInfo, Any, str, cedarpy.Entities]] \
            = OrderedDict()
        self._results_size = results
        self._results: OrderedDict[tuple[str, ...], Decision] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def parse(self, text: str) -> cedarpy.Entities:
        found = self._items.get(text)
        if found is not None:
            self._items.move_to_end(text)
            return found
        parsed = cedarpy.Entities.from_json_str(text)
        self._items[text] = parsed
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return parsed

    def for_call(self, principal: Principal, tool: ToolInfo,
                 declared: dict[str, Type] | None = None) -> tuple[str, cedarpy.Entities]:
        """The entity set of this principal calling this tool, as (JSON text, parsed handle)."""
        key = (id(principal), id(tool), id(declared))
        found = self._by_identity.get(key)
        if found is not None and found[0] is principal and found[1] is tool and found[2] is declared:
            return found[3], found[4]
        text = _json(E.entities(principal, tool, declared))
        parsed = self.parse(text)
        self._by_identity[key] = (principal, tool, declared, text, parsed)
        if len(self._by_identity) > self._size:
            self._by_identity.popitem(last=False)
        return text, parsed

    def decision(self, key: tuple[str, ...]) -> Decision | None:
        found = self._results.get(key)
        if found is not None:
            self._results.move_to_end(key)
        return found

    def remember(self, key: tuple[str, ...], decision: Decision) -> None:
        self._results[key] = decision
        if len(self._results) > self._results_size:
            self._results.popitem(last=False)


def _json(value: Any) -> str:
    # Entities and context are built here from converted values (64-bit ints, finite numbers, string
    # keys), which orjson encodes exactly like json.dumps, several times faster.
    return orjson.dumps(value).decode()


def _entities(principal: Principal, tool: ToolInfo, cache: EntityCache | None,
              declared: dict[str, Type] | None) -> tuple[str, cedarpy.Entities]:
    if cache is not None:
        return cache.for_call(principal, tool, declared)
    text = _json(E.entities(principal, tool, declared))
    return text, cedarpy.Entities.from_json_str(text)


def _deny(errors: Iterable[str], started: float, version: str, ids: Iterable[str] = ()) -> Decision:
    return Decision("deny", tuple(ids), tuple(errors), (time.perf_counter() - started) * 1e6, version)


def _names(policies: LoadedPolicies, results: Iterable[cedarpy.AuthzResult], *, allowed: bool | None) -> list[str]:
    """@ids of the policies behind the results (optionally only allowed / only denied ones), deduplicated."""
    out: list[str] = []
    for result in results:
        if allowed is not None and result.allowed != allowed:
            continue
        for internal in sorted(result.diagnostics.reasons, key=policy_order):  # Cedar's is hash order: file order
            name = policies.name(internal)
            if name not in out:
                out.append(name)
    return out


def _errors(policies: LoadedPolicies, results: Iterable[cedarpy.AuthzResult], who: list[str]) -> list[str]:
    out: list[str] = []
    for member, result in zip(who, results, strict=True):
        out.extend(f"{member}: {policies.describe_error(e)}" for e in sorted(result.diagnostics.errors))
        if result.decision == cedarpy.Decision.NoDecision and not result.diagnostics.errors:
            out.append(f"{member}: no decision")
    return out


def _batch(policies: LoadedPolicies, ents: cedarpy.Entities, who: list[str], action: str, tool: ToolInfo,
           context: dict[str, Any], context_text: str | None = None) -> list[cedarpy.AuthzResult]:
    context_text = context_text if context_text is not None else _json(context)
    requests = [{**E.request(member, action, tool, context), "context": context_text} for member in who]
    # The extension entry point directly: the public wrapper re-serialises the context and copies each
    # request (about 50 µs a call); the answers are identical.
    raw = _internal.is_authorized_batch(requests, policies.policy_set, ents._inner, None, False)
    return [cedarpy.AuthzResult(json.loads(text)) for text in raw]


def decide(policies: LoadedPolicies, principal: Principal, action: str, tool: ToolInfo, facts: E.CallFacts, *,
           granted: bool = False, bounds: E.Bounds = E.DEFAULT_BOUNDS,
           cache: EntityCache | None = None) -> Decision:
    """The combined decision for the principal and every actor of its chain (most restrictive wins)."""
    started = time.perf_counter()
    version = policies.version
    who = E.member_ids(principal)
    try:
        ents_text, ents = _entities(principal, tool, cache, policies.agent_types)
    except ValueError as exc:  # an attribute of another type than declared (agentattrs) too: deny
        return _deny([f"entities: {exc}"], started, version)
    if policies.reads_no_context:
        first, first_text = {}, "{}"
    else:
        first = E.context(principal, facts, "granted" if granted else "none", bounds, policies.context_keys)
        if policies.context_reads is not None:
            first = prune(first, policies.context_reads)
        first_text = _json(first)
    key = (version, ents_text, action, tool.cedar_id, first_text, "granted" if granted else "", *who)
    known = cache.decision(key) if cache is not None else None
    if known is not None:  # the same inputs decide the same way: only the timing is this call's own
        decision = Decision(known.outcome, known.policy_ids, known.errors, (time.perf_counter() - started) * 1e6,
                            version)
        return _approvable(policies, decision, facts, started) if decision.outcome == "approval_required" else decision
    decision = _evaluate(policies, ents, who, action, tool, first, first_text, granted, started)
    # A value of another type than declared can make a forbid silently false (see argtypes): deny, and
    # keep what Cedar said too (an operator that did error names its policy).
    mistyped = check(first, policies.context_types.get(action)) if policies.context_types else []
    if mistyped:
        decision = _deny([*(f"argument type mismatch: {m}" for m in mistyped), *decision.errors], started,
                         version, decision.policy_ids if decision.outcome == "deny" else ())
    if cache is not None:
        cache.remember(key, decision)
    return _approvable(policies, decision, facts, started) if decision.outcome == "approval_required" else decision


def approve_args_mismatches(policies: LoadedPolicies, args: Any) -> list[str]:
    """`resource.args.<path> is ..., the schema declares ...` for each argument the `approve` policies read whose
    value does not fit Approval's declared `args` type (as `check` does for the context of call_tool)."""
    spec = policies.approval_args
    if spec is None:
        return []
    reads, typ = spec
    converted, _ = E.convert_args(args)
    if reads is not None:
        converted = prune(converted, reads)
    return ["resource" + m.removeprefix("context") for m in check({"args": converted}, ("record", {"args": typ}))]


def _approvable(policies: LoadedPolicies, decision: Decision, facts: E.CallFacts, started: float) -> Decision:
    """A call to be held whose arguments the approve policies would read mistyped is denied now: every approver's
    decision would deny it (an error, or a silently false comparison), so it would wait unseen until it expired."""
    mistyped = approve_args_mismatches(policies, facts.args)
    if not mistyped:
        return decision
    return _deny([f"argument type mismatch: {m} (no approver could decide this call)" for m in mistyped], started,
                 decision.policy_version)


def _evaluate(policies: LoadedPolicies, ents: cedarpy.Entities, who: list[str], action: str, tool: ToolInfo,
              first: dict[str, Any], first_text: str, granted: bool, started: float) -> Decision:
    version = policies.version
    results = _batch(policies, ents, who, action, tool, first, first_text)
    errors = _errors(policies, results, who)
    if errors:
        return _deny(errors, started, version)
    if all(r.allowed for r in results):
        return Decision("allow", tuple(_names(policies, results, allowed=True)), (),
                        (time.perf_counter() - started) * 1e6, version)
    forbids = _names(policies, results, allowed=False)
    if granted:
        return _deny((), started, version, forbids)
    # Policies that never read context.approval cannot be lifted by it: the same context decides again.
    lifted = {**first, "approval": "granted"} if "approval" in first else first
    second = _batch(policies, ents, who, action, tool, lifted)
    errors = _errors(policies, second, who)
    if errors:
        return _deny(errors, started, version, forbids)
    if not all(r.allowed for r in second):
        return _deny((), started, version, _names(policies, second, allowed=False) or forbids)
    ids = forbids + [n for n in _names(policies, second, allowed=True) if n not in forbids]
    return Decision("approval_required", tuple(ids), (), (time.perf_counter() - started) * 1e6, version)


def decide_approve(policies: LoadedPolicies, user_id: str, groups: list[str], approval: dict[str, Any],
                   chain: Sequence[str] = ()) -> Decision:
    """May this person decide this pending call? (action `approve`; `chain`: the actors of the approver's token)."""
    started = time.perf_counter()
    try:
        ents = cedarpy.Entities.from_json_str(json.dumps(E.approval_entities(user_id, groups, approval)))
    except ValueError as exc:
        return _deny([f"entities: {exc}"], started, policies.version)
    result = cedarpy.is_authorized(E.approval_request(user_id, approval, chain), policies.policy_set, ents)
    errors = _errors(policies, [result], [user_id])
    # As for call_tool: a value of another type than declared makes `==` silently false, `<` an error; deny.
    mistyped = [f"argument type mismatch: {m}" for m in approve_args_mismatches(policies, approval.get("args"))]
    if errors or mistyped:
        return _deny([*mistyped, *errors], started, policies.version)
    outcome: Outcome = "allow" if result.allowed else "deny"
    return Decision(outcome, tuple(_names(policies, [result], allowed=None)), (),
                    (time.perf_counter() - started) * 1e6, policies.version)
