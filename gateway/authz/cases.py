"""Policy test cases (YAML) and the request pieces the CLI builds from plain data: principals, tools, facts.

A cases file (see docs/policies.md "Policy tests") names principals and tools once and lists cases,
each with the outcome (`allow` | `deny` | `approval_required`) and optionally the exact `@id`s that
determine it. The same runner serves `customs policy test` and pytest.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args

import yaml

from gateway.authz import entities as E
from gateway.authz.actions import AGENT_ACTIONS
from gateway.authz.approve_case import approve_decision
from gateway.authz.argnames import schema_totals
from gateway.authz.casefields import CaseError as CaseError
from gateway.authz.casefields import (
    Identify,
    Refused,
    check_inline_agent,
    check_task,
    check_task_names,
    check_text_settings,
    not_a_mapping,
    not_unicode,
    stated_issuer,
)
from gateway.authz.casefields import check_keys as _check_keys
from gateway.authz.casefields import check_upstream as _check_upstream
from gateway.authz.casefields import mapping as mapping
from gateway.authz.evaluate import decide
from gateway.authz.policyset import LoadedPolicies, load_policies
from gateway.config.load import strict_yaml_load, unreadable
from gateway.config.model import Sensitivity
from gateway.config.rules import ISSUER_ATTRIBUTE
from gateway.context import Actor, Decision, Principal, ToolInfo
from gateway.identity.chain import ChainError, actor_id, build_chain, check_repeated_agents, claim_mapping, map_claims

_TOOL_FIELDS = {f.name for f in fields(ToolInfo)} - {"upstream", "name", "definition"}
_DOC_KEYS = frozenset({"policies", "environment", "principals", "tools", "claims", "cases"})
_CASE_KEYS = frozenset({"name", "action", "principal", "chain", "tool", "labels", "args", "environment",
                        "args_contain_secret", "task", "approved", "now", "context", "expect", "policies",
                        "expect_errors", "user", "approval"})
_PRINCIPAL_KEYS = frozenset({"id", "issuer", "attributes", "chain"})
# docs/policies.md's context table: what a case's `context:` may state.
_CONTEXT_KEYS = frozenset({"args", "args_truncated", "environment", "tenant", "chain", "chain_depth", "approval",
                           "time", "args_contain_secret", "task"})
# The same-named flat keys a case may use instead of `context:` (older files); never both.
_FLAT_FACTS = {"args": "args", "environment": "environment", "args_contain_secret": "args_contain_secret",
               "task": "task", "approved": "approval", "now": "time"}
SENSITIVITIES: tuple[str, ...] = get_args(Sensitivity)


def agent_action(action: Any, where: str) -> str:
    """`action` when the gateway decides it for an agent; else a CaseError naming the known ones."""
    if action not in AGENT_ACTIONS:
        raise CaseError(f"{where}: unknown action {action!r}; one of {', '.join(AGENT_ACTIONS)}"
                        " (or approve, in a policy test case with user: and approval:)")
    return str(action)


def principal_from_claims(claims: dict[str, Any], mapping: dict[str, str] | None = None,
                          where: str = "claims") -> Principal:
    """A Principal from token-like claims, mapped by the gateway's own identity code (gateway/identity/chain.py).

    `sub` (or `spiffe_id`, standing in for an mTLS SVID) is the id; attributes come from the claims by
    `mapping` (attribute <- claim; default: the gateway's default mapping); nested `act` is the chain.
    """
    mapping = claim_mapping({}) if mapping is None else mapping
    subject = claims.get("spiffe_id") or claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise CaseError(f"{where}: claims need a non-empty 'sub' (or 'spiffe_id')")
    try:
        ident = actor_id(subject)
        chain = build_chain(claims.get("act"), mapping, {})
        attributes = map_claims(claims, mapping)
        check_repeated_agents(ident, attributes, chain)  # the gateway refuses such a token at identify
    except ChainError as exc:
        raise CaseError(f"{where}: {exc}") from exc
    return Principal(id=ident, issuer=stated_issuer(claims, "iss", where), subject=ident,
                     attributes=attributes, chain=chain)


def _is_claims(spec: Any) -> bool:
    return isinstance(spec, dict) and "id" not in spec and ("sub" in spec or "spiffe_id" in spec)


def _actor(spec: Any, named: dict[str, Any], where: str) -> Actor:
    if isinstance(spec, str):
        if spec not in named:  # not an id: a misspelled name would be an agent with no attributes, denied
            raise CaseError(f"{where}: {spec!r} is not a name in `principals` ({', '.join(sorted(named)) or 'none'});"
                            f" an agent known only by its id is {{id: {json.dumps(spec)}}}")
        spec = named[spec]
    if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
        raise CaseError(f"{where}: an actor is a name from `principals` or {{id: ..., attributes: {{...}}}}")
    _check_keys(spec, _PRINCIPAL_KEYS, f"{where}: principal {spec['id']!r}")
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise CaseError(f"{where}: attributes must be a mapping")
    if "issuer" in attributes:  # the gateway's, not an attribute like the others: it would be dropped
        raise CaseError(f"{where}: principal {spec['id']!r}: attributes: {ISSUER_ATTRIBUTE}; state it as `issuer:` "
                        "beside `id:`")
    check_inline_agent(spec["id"], attributes, where)
    return Actor(spec["id"], dict(attributes))


def principal_from(spec: Any, named: dict[str, Any], chain: Any, where: str,
                   mapping: dict[str, str] | None = None, identify: Identify | None = None) -> Principal:
    """A Principal from a case: a name from `principals`, an inline {id, issuer, attributes, chain}, or token claims
    ({sub, tenant, groups, act: {...}}, mapped as the gateway maps a verified token's claims: by `identify`, a
    deployment's identify, when given, else by `mapping`)."""
    if isinstance(spec, str) and _is_claims(named.get(spec)):
        spec = named[spec]
    if _is_claims(spec):
        if chain is not None:
            raise CaseError(f"{where}: a principal given as claims carries its chain in `act`, not `chain:`")
        return principal_from_claims(spec, mapping, where) if identify is None else identify(spec, where)
    base = _actor(spec, named, where)
    resolved = named.get(spec, {}) if isinstance(spec, str) else spec
    issuer = stated_issuer(resolved, "issuer", where)
    raw_chain = chain if chain is not None else resolved.get("chain")
    actors = tuple(_chain_actor(raw, named, issuer, where) for raw in raw_chain or ())
    try:  # no token the gateway accepts names one agent with two sets of attributes
        check_repeated_agents(base.id, base.attributes, actors)
    except ChainError as exc:
        raise CaseError(f"{where}: {exc}") from exc
    return Principal(id=base.id, issuer=issuer, subject=base.id, attributes=base.attributes, chain=actors)


def _chain_actor(raw: Any, named: dict[str, Any], issuer: str, where: str) -> Actor:
    """An actor of a case's chain, which may state no issuer but its principal's: the gateway gives every actor
    the issuer of the token naming it."""
    actor = _actor(raw, named, where)
    stated = (named[raw] if isinstance(raw, str) else raw).get("issuer", issuer)
    if stated != issuer:
        raise CaseError(f"{where}: actor {actor.id!r} states issuer {stated!r}, but an actor's issuer is its "
                        f"principal's ({issuer or 'none stated'}): the token's issuer vouches for its chain")
    return actor


# The labels a prompt or resource has unless labelled otherwise, as the gateway decides it
# (gateway/catalog.py named_info): read-only, not destructive, closed-world. A tool's are the MCP defaults.
_ITEM_DEFAULTS: dict[str, Any] = {"read_only": True, "destructive": False, "open_world": False}


def tool_from(name: Any, overrides: Any, tools: dict[str, Any], where: str, action: str = "call_tool") -> ToolInfo:
    """A ToolInfo for `upstream/tool`, labelled from the file's `tools` map and the case's own overrides;
    for `get_prompt` and `read_resource` the unlabelled defaults are a prompt's or resource's."""
    upstream, _, tool = name.partition("/") if isinstance(name, str) else ("", "", "")
    if not upstream or not tool:
        raise CaseError(f"{where}: tool must be 'upstream/tool', got {name!r}")
    _check_upstream(upstream, where)
    labels = {**mapping(tools.get(name), where, f"the labels of tools[{name!r}]"),
              **mapping(overrides, where, "labels")}
    unknown = set(labels) - _TOOL_FIELDS
    if unknown:
        raise CaseError(f"{where}: unknown tool label(s) {sorted(unknown)}; known: {sorted(_TOOL_FIELDS)}")
    _check_labels(labels, where)
    if action in ("get_prompt", "read_resource"):
        labels = {**_ITEM_DEFAULTS, **labels}
    return ToolInfo(upstream=upstream, name=tool, **labels)


def _check_labels(labels: dict[str, Any], where: str) -> None:
    """Label values as the gateway's config takes them: a misspelled sensitivity would otherwise test a tool
    that no restricted-only policy matches, where the gateway refuses the config."""
    for name, value in labels.items():
        if name == "sensitivity":
            if value not in SENSITIVITIES:
                raise CaseError(f"{where}: label sensitivity must be one of {', '.join(SENSITIVITIES)}, got {value!r}")
        elif not isinstance(value, bool):
            raise CaseError(f"{where}: label {name} must be true or false, got {value!r}")


def _flag(case: dict[str, Any], key: str, where: str) -> bool:
    """A case's true/false key (absent: false); text such as "no" would be truthy, so only a boolean counts."""
    value = case.get(key, False)
    if not isinstance(value, bool):
        raise CaseError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _when(now: Any, where: str) -> dt.datetime:
    try:
        when = now if isinstance(now, dt.datetime) else dt.datetime.fromisoformat(str(now))
    except ValueError as exc:
        raise CaseError(f"{where}: now must be an ISO date-time: {exc}") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _time(value: Any, where: str) -> dt.datetime:
    """context.time {hour, weekday} as a moment with that UTC hour and ISO weekday (1 = Monday)."""
    if not isinstance(value, dict) or set(value) != {"hour", "weekday"}:
        raise CaseError(f"{where}: context.time must be {{hour: 0-23, weekday: 1-7}}")
    hour, weekday = value["hour"], value["weekday"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (hour, weekday)) \
            or not (0 <= hour <= 23 and 1 <= weekday <= 7):  # `hour: true` would be hour 1
        raise CaseError(f"{where}: context.time must be {{hour: 0-23, weekday: 1-7}}, got {value!r}")
    return dt.datetime(2024, 1, weekday, hour, tzinfo=dt.UTC)  # 2024-01-01 was a Monday


def _typed(context: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = context[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CaseError(f"{where}: context.{key} has the wrong type ({type(value).__name__})")
    return value


def _given(case: dict[str, Any], where: str) -> dict[str, Any]:
    """The case's context facts: `context:` entries and the older flat keys, each stated at most once."""
    context = case.get("context") or {}
    if not isinstance(context, dict):
        raise CaseError(f"{where}: context must be a mapping")
    _check_keys(context, _CONTEXT_KEYS, f"{where}: context")
    merged = dict(context)
    for flat, key in _FLAT_FACTS.items():
        if flat in case:
            if key in context:
                raise CaseError(f"{where}: {key} given twice (`{flat}` and `context.{key}`)")
            merged[key] = case[flat] if flat != "approved" else ("granted" if _flag(case, flat, where) else "none")
            if flat == "now":
                merged[key] = _when(case[flat], where)
    return merged


def facts_from(case: dict[str, Any], environment: str, where: str) -> tuple[E.CallFacts, bool]:
    """The context facts of a case (and whether it is decided as approved): `context:` overrides what the
    principal and the file would otherwise give (tenant and chain from the principal, environment)."""
    given = _given(case, where)
    when = given.get("time")
    if when is not None and not isinstance(when, dt.datetime):
        when = _time(when, where)
    approval = given.get("approval", "none")
    if approval not in ("none", "granted"):
        raise CaseError(f"{where}: approval must be \"none\" or \"granted\", got {approval!r}")
    overrides: list[tuple[str, Any]] = []
    if "tenant" in given:
        overrides.append(("tenant", _typed(given, "tenant", str, where)))
    if "chain" in given:
        chain = _typed(given, "chain", list, where)
        overrides.append(("chain", sorted({str(c) for c in chain})))
    if "chain_depth" in given:
        overrides.append(("chain_depth", _typed(given, "chain_depth", int, where)))
    if "task" in given and given["task"] is not None:
        check_task(_typed(given, "task", dict, where), where)
    facts = E.CallFacts(
        args=mapping(given.get("args"), where, "args (the call's arguments)"),
        environment=str(_typed(given, "environment", str, where) if "environment" in given else environment),
        args_contain_secret=bool("args_contain_secret" in given
                                 and _typed(given, "args_contain_secret", bool, where)),
        args_truncated=bool("args_truncated" in given and _typed(given, "args_truncated", bool, where)),
        task=given.get("task"), now=when, overrides=tuple(overrides))
    return facts, approval == "granted"


@dataclass(frozen=True)
class CaseResult:
    name: str
    ok: bool
    expected: str
    decision: Decision
    message: str = ""
    line: int | None = None  # where the case starts in its file, for `customs policy test`'s FAIL line


def run_case(policies: LoadedPolicies, case: dict[str, Any], doc: dict[str, Any], where: str,
             identify: Identify | None = None, environment: str | None = None) -> CaseResult:
    """Evaluate one case and compare outcome (and `policies`, when given, as an exact set). `identify` builds
    principals given as claims (a deployment's, `--config`), `environment` is the default of the file's."""
    name = str(case.get("name") or where.rpartition(": ")[2])  # unnamed: its place (`cases[0]`), as where ends
    _check_keys(case, _CASE_KEYS, f"{where} ({name})" if case.get("name") else where)
    expected = case.get("expect")
    if expected not in ("allow", "deny", "approval_required"):
        raise CaseError(f"{where}: expect must be allow, deny or approval_required, got {expected!r}")
    action = str(case.get("action", "call_tool"))
    if action == "approve":
        decision = approve_decision(policies, case, where, name)
    else:
        action = agent_action(action, where)
        if "user" in case or "approval" in case:  # `approval: granted` was ignored: decided without approval
            raise CaseError(f"{where}: user: and approval: are for action approve; a call decided as approved is "
                            "`approved: true` (or context: {approval: granted})")
        try:
            principal: Principal | Refused = principal_from(case.get("principal"), doc.get("principals") or {},
                                                            case.get("chain"), where,
                                                            claim_mapping(doc.get("claims") or {}), identify)
        except Refused as exc:  # decided after the rest is read: a refused token hides no bad input
            principal = exc
        tool = tool_from(case.get("tool"), case.get("labels"), doc.get("tools") or {}, where, action)
        facts, granted = facts_from(case, str(doc.get("environment", environment or "dev")), where)
        check_task_names(facts.task, schema_totals(policies.schema), where)
        if isinstance(principal, Refused):
            return _refused(name, str(expected), principal, case, where)
        decision = decide(policies, principal, action, tool, facts, granted=granted)
    problems = []
    if decision.outcome != expected:
        problems.append(f"expected {expected}, got {decision.outcome}")
    want = case.get("policies")
    if want is not None and not isinstance(want, list):
        raise CaseError(f"{where}: policies must be a list of @ids, got {type(want).__name__}")
    if want is not None and set(want) != set(decision.policy_ids):
        problems.append(f"expected policies {sorted(want)}, got {sorted(decision.policy_ids)}")
    if bool(decision.errors) != _flag(case, "expect_errors", where):
        problems.append("errors: " + ("; ".join(decision.errors) or "none, but expect_errors is set"))
    return CaseResult(name, not problems, str(expected), decision, "; ".join(problems))


def _refused(name: str, expected: str, refused: Refused, case: dict[str, Any], where: str) -> CaseResult:
    """A case whose token identify refuses: the call is never decided, so it is denied (401, no policy, no error).
    It passes as `expect: deny` (the agent gets nothing) with the refusal noted; any other expectation fails."""
    want = case.get("policies")
    if want is not None and not isinstance(want, list):
        raise CaseError(f"{where}: policies must be a list of @ids, got {type(want).__name__}")
    problems = [] if expected == "deny" else [f"expected {expected}, but {refused}"]
    if want:
        problems.append(f"expected policies {sorted(want)}, but no policy decides a refused token")
    if _flag(case, "expect_errors", where):
        problems.append("errors: none (identify refused the token), but expect_errors is set")
    return CaseResult(name, not problems, expected, Decision("deny"), "; ".join(problems) or str(refused))


def load_cases(path: Path) -> dict[str, Any]:
    try:
        doc = strict_yaml_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{path}: cannot read cases: {unreadable(exc)}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CaseError(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise CaseError(f"{path}: expected a mapping with a `cases:` list")
    bad = not_unicode(doc, "")
    if bad is not None:  # Cedar's JSON cannot take it: the case would end in a traceback
        raise CaseError(f"{path}: {bad or '(root)'}: not valid Unicode text (a lone surrogate, e.g. a \\udcff escape)")
    _check_keys(doc, _DOC_KEYS, str(path))
    check_text_settings(doc, ("policies", "environment"), str(path))
    mapping(doc.get("principals"), str(path), "principals (name: principal)")
    for name, labels in mapping(doc.get("tools"), str(path), "tools (upstream/tool: labels)").items():
        mapping(labels, str(path), f"the labels of tools[{name!r}]")
        if not isinstance(name, str) or not all(name.partition("/")[::2]):  # no case could name it: labels nowhere
            raise CaseError(f"{path}: tools: {name!r} must be 'upstream/tool', as a case's tool: names it")
    claims = doc.get("claims") or {}
    if not isinstance(claims, dict) or not all(isinstance(k, str) and isinstance(v, str) and v  # a claim named "": none
                                               for k, v in claims.items()):
        raise CaseError(f"{path}: claims must map attribute names to claim names (as issuers[].claims)")
    if "issuer" in claims:  # as in the config: the principal's issuer is its `iss`, never a mapped claim
        raise CaseError(f"{path}: claims: {ISSUER_ATTRIBUTE} (principal.issuer: a principal's `iss`); "
                        "map the claim to another attribute name")
    return doc


def policies_dir_for(path: Path, doc: dict[str, Any], override: Path | None) -> Path:
    """--policies wins; else the file's `policies:` (relative to the file); else the parent of tests/."""
    if override is not None:
        return override
    if isinstance(doc.get("policies"), str):
        return (path.parent / str(doc["policies"])).resolve()
    return path.parent.parent if path.parent.name == "tests" else path.parent


def run_cases_file(path: Path, policies_dir: Path | None = None, policies: LoadedPolicies | None = None, *,
                   identify: Identify | None = None, environment: str | None = None) -> list[CaseResult]:
    """Run every case of one file (loading the policies unless given); `identify` and `environment` as in run_case."""
    doc = load_cases(path)
    loaded = policies or load_policies(policies_dir_for(path, doc, policies_dir))
    lines = _case_lines(path)
    where = [f"{path}:{lines[i]}: cases[{i}]" if i < len(lines) else f"{path}: cases[{i}]"
             for i in range(len(doc["cases"]))]
    return [replace(run_case(loaded, case, doc, where[i], identify, environment),
                    line=lines[i] if i < len(lines) else None)
            for i, case in enumerate(doc["cases"]) if isinstance(case, dict) or not_a_mapping(where[i])]


def _case_lines(path: Path) -> list[int]:
    """The line each item of the file's `cases:` starts on, so a problem names it as a policy's does
    (file:line); [] when the file's node tree cannot be read (it loaded, so this is not expected)."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    for key, value in root.value if isinstance(root, yaml.MappingNode) else ():
        if key.value == "cases" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []
