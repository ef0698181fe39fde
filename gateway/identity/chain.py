"""Claims → principal attributes, and RFC 8693 `act` claims → the ordered delegation chain.

Attributes come from claims by the issuer's `claims:` mapping (attribute ← claim), on top of the
default that maps tenant, owner, groups, environment and clearance from same-named claims.
Each actor in a nested `act` is attributed from the claims inside its own `act` object (same
mapping); when those yield nothing, from the `agents:` registry in config; else it has none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config.model import MAX_CHAIN_DEPTH, AgentRecord
from gateway.context import Actor
from gateway.identity.spiffe import InvalidSpiffeId, is_spiffe_uri, validate_spiffe_id

DEFAULT_CLAIMS: Mapping[str, str] = {name: name for name in ("tenant", "owner", "groups", "environment",
                                                              "clearance")}
MAX_ID_LENGTH = 2048


class ChainError(ValueError):
    """The `act` claim is malformed or too deep (the caller answers 401)."""


class RepeatedAgentError(ChainError):
    """The principal and its chain name one agent id with different attributes (see `repeated_agent_conflict`)."""


def claim_mapping(configured: Mapping[str, str]) -> dict[str, str]:
    """The effective attribute ← claim mapping of an issuer."""
    return {**DEFAULT_CLAIMS, **configured}


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    """The claim `name`, else (a dotted name, e.g. "org.tenant") the value it reaches in nested objects. A level
    may be a key holding dots itself, longest first: Kubernetes service-account tokens carry
    `{"kubernetes.io": {"namespace": ...}}`, which `kubernetes.io.namespace` names."""
    if name in claims:
        return claims[name]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        inner = claims.get(head)
        if isinstance(inner, Mapping):
            found = _lookup(inner, ".".join(parts[cut:]))
            if found is not None:
                return found
    return None


def _attribute_value(attribute: str, value: Any) -> Any:
    """Only strings, booleans, integers and lists of strings become attributes: Cedar has no floats or
    free-form records here. `groups` is always a list. An empty string counts as missing: `tenant: ""` must not
    pass `principal has tenant` as a tenant named "". The contract's single-valued attributes are Strings:
    a number or boolean becomes its JSON text, since tenant and owner are also read outside Cedar (context.tenant,
    the Tenant parent, an approver owning the agent), where a Long tenant was none; a schema that declares one a
    Long or Bool gets it back exactly at the decision (authz/agentattrs.py)."""
    if isinstance(value, str):
        return None if not value else [value] if attribute == "groups" else value
    if isinstance(value, bool | int):
        if attribute in SCALAR_ATTRIBUTES:
            return ("true" if value else "false") if isinstance(value, bool) else str(value)
        return None if attribute == "groups" else value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        # Every item, never the first N: a forbid on membership must see a group listed late. The token's own
        # size bound (16 KiB) bounds the list.
        return [item for item in value if item] or None
    return None


# The contract's single-valued attributes (docs/policies.md: Strings; a schema may make one a Long or Bool).
SCALAR_ATTRIBUTES = frozenset({"tenant", "owner", "environment", "clearance", "trust"})
_JSON_KINDS = {float: "a fractional number", list: "a list", dict: "an object"}


def _check_contract_type(attribute: str, claim: str, value: Any) -> None:
    """A contract attribute that no policy can have been written for is refused, not kept or left out: a
    multi-valued `trust: ["low"]` becomes a Set, and `principal.trust == "low"` is merely false on it (as on
    a trust left out), so a forbid would not fire; a mixed groups list would hide its strings the same way."""
    if attribute == "groups":
        # An object, a number or a boolean were left out, as no groups at all: the same silent miss.
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ChainError(f"claim {claim!r} (attribute groups) must be a string or a list of strings")
    elif attribute in SCALAR_ATTRIBUTES and isinstance(value, float | list | dict):
        raise ChainError(f"claim {claim!r} (attribute {attribute}) must be a single value (a string), "
                         f"got {_JSON_KINDS[type(value)] if type(value) in _JSON_KINDS else 'an object'}")


def map_claims(claims: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Principal attributes from token claims (absent claims, and non-plain ones of attributes outside the
    contract, are left out; a contract attribute of another type is a ChainError)."""
    attributes: dict[str, Any] = {}
    for attribute, claim in mapping.items():
        raw = _lookup(claims, claim)
        _check_contract_type(attribute, claim, raw)
        value = _attribute_value(attribute, raw)
        if value is not None:
            attributes[attribute] = value
    return attributes


def registry_attributes(agent_id: str, agents: Mapping[str, AgentRecord]) -> dict[str, Any]:
    """Attributes of a known agent from the config registry (unset fields left out)."""
    record = agents.get(agent_id)
    if record is None:
        return {}
    data = record.model_dump(exclude_none=True)
    data["groups"] = list(record.groups)
    if not data["groups"]:
        del data["groups"]
    return data


def actor_id(value: Any) -> str:
    """A `sub` of a principal or actor: a bounded non-empty string, a valid SPIFFE ID if it claims to be one."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ChainError("subject must be a non-empty string")
    if is_spiffe_uri(value):
        try:
            validate_spiffe_id(value)
        except InvalidSpiffeId as exc:
            raise ChainError(str(exc)) from exc
    return value


def build_chain(act: Any, mapping: Mapping[str, str], agents: Mapping[str, AgentRecord],
                max_depth: int = MAX_CHAIN_DEPTH, subject: str | None = None) -> tuple[Actor, ...]:
    """The chain of actors from a (possibly nested) `act` claim, outermost (immediate) actor first.

    The registry (`agents`) stands for an agent the token does not describe, at its first naming: an `act` object
    naming by `sub` alone an agent already named (the principal, `subject`, or an earlier actor) adds nothing, so
    the registry can neither add to what the token said of that agent nor contradict it."""
    chain: list[Actor] = []
    named = {subject}
    node = act
    while node is not None:
        if len(chain) >= max_depth:
            raise ChainError(f"delegation chain deeper than {max_depth} actors (the gateway's limit)")
        if not isinstance(node, Mapping):
            raise ChainError("act claim must be an object")
        ident = actor_id(node.get("sub"))
        attributes = map_claims(node, mapping) or ({} if ident in named else registry_attributes(ident, agents))
        named.add(ident)
        chain.append(Actor(ident, attributes))
        node = node.get("act")
    return tuple(chain)


def _same_value(value: Any) -> str:
    """An attribute's value as Cedar sees it, as text to compare: a list is a Set (order and repeats lost);
    JSON keeps `true` and `1` apart, as Cedar keeps Bool and Long."""
    if isinstance(value, list | tuple | set | frozenset):
        return json.dumps(sorted({_same_value(item) for item in value}))
    if isinstance(value, Mapping):
        return json.dumps({str(key): _same_value(item) for key, item in value.items()}, sort_keys=True)
    return json.dumps(value, sort_keys=True, default=str)


def _differing(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """The attribute names both occurrences give (not null) with different values. One that only one of them gives
    is no conflict (an `act` object often names an agent by `sub` alone): the entity gets it (`merged_attributes`).
    `issuer` is the gateway's own, the verified issuer's on every Agent of the token, so not compared."""
    names = {name for name, value in first.items() if value is not None and second.get(name) is not None}
    return sorted(name for name in names - {"issuer"} if _same_value(first[name]) != _same_value(second[name]))


def merged_attributes(first: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """One agent's attributes from two occurrences that do not conflict: the first's, plus what only the later gives."""
    merged = dict(first)
    merged.update((name, value) for name, value in later.items() if merged.get(name) is None and value is not None)
    return merged


def repeated_agent_conflict(subject: str, attributes: Mapping[str, Any], chain: Sequence[Actor]) -> str | None:
    """Why the principal (`subject`, `attributes`) and its `chain` cannot be decided, or None when they can.

    Cedar holds one `Agent` entity per id, so an agent named twice, as the principal and an actor or as two
    actors (A → B → A), is one entity with one set of attributes: named with different ones, one set would
    silently stand for both. Named alike (lists as Sets), or with attributes only one occurrence gives, it is decided
    as any chain is, the entity holding every attribute given."""
    if not chain:
        return None
    # Every occurrence of each agent so far (0: the principal), a later one checked against each: against the
    # attributes `members` merges from them all, not only the first occurrence's (which may have named it bare).
    seen: dict[str, list[tuple[int, Mapping[str, Any]]]] = {subject: [(0, attributes)]}
    for position, actor in enumerate(chain, start=1):
        occurrences = seen.get(actor.id)
        if occurrences is None:
            seen[actor.id] = [(position, actor.attributes)]
            continue
        for earlier, given in occurrences:
            differ = _differing(given, actor.attributes)
            if differ:
                first = f"actor {earlier}" if earlier else "the principal"
                return (f"delegation chain names agent {actor.id!r} twice with different attributes ({first} and "
                        f"actor {position} differ in {', '.join(differ)}); Cedar holds one Agent per id")
        occurrences.append((position, actor.attributes))
    return None


def check_repeated_agents(subject: str, attributes: Mapping[str, Any], chain: Sequence[Actor]) -> None:
    """`repeated_agent_conflict` as a RepeatedAgentError (identify answers it with 401 invalid_token)."""
    conflict = repeated_agent_conflict(subject, attributes, chain)
    if conflict is not None:
        raise RepeatedAgentError(conflict)
