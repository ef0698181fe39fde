"""Policy test cases (YAML) and the request pieces the CLI builds from plain data: principals, tools, facts.

A cases file (see docs/policies.md "Policy tests") names principals and tools once and lists cases,
each with the outcome (`allow` | `deny` | `approval_required`) and optionally the exact `@id`s that
determine it. The same runner serves `customs policy test` and pytest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from gateway.authz import entities as E
from gateway.authz.evaluate import decide, decide_approve
from gateway.authz.policyset import LoadedPolicies, load_policies
from gateway.context import Actor, Decision, Principal, ToolInfo

_TOOL_FIELDS = {f.name for f in fields(ToolInfo)} - {"upstream", "name", "definition"}
_CLAIM_ATTRIBUTES = ("tenant", "owner", "environment", "clearance", "trust", "groups")


class CaseError(Exception):
    """A cases file (or a CLI input) that cannot be understood; the message says where."""


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """A Principal from token-like claims: `sub` (or `spiffe_id`), attributes, nested `act` for the chain."""
    def ident(obj: dict[str, Any]) -> str:
        value = obj.get("spiffe_id") or obj.get("sub")
        if not isinstance(value, str) or not value:
            raise CaseError("claims need a non-empty 'sub' (or 'spiffe_id')")
        return value

    def attrs(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: obj[k] for k in _CLAIM_ATTRIBUTES if k in obj}

    chain: list[Actor] = []
    act = claims.get("act")
    while isinstance(act, dict):
        chain.append(Actor(ident(act), attrs(act)))
        act = act.get("act")
    return Principal(id=ident(claims), issuer=str(claims.get("iss", "cli")), subject=ident(claims),
                     attributes=attrs(claims), chain=tuple(chain))


def _actor(spec: Any, named: dict[str, Any], where: str) -> Actor:
    if isinstance(spec, str):
        spec = named.get(spec, {"id": spec})
    if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
        raise CaseError(f"{where}: an actor is a name from `principals` or {{id: ..., attributes: {{...}}}}")
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise CaseError(f"{where}: attributes must be a mapping")
    return Actor(spec["id"], dict(attributes))


def principal_from(spec: Any, named: dict[str, Any], chain: Any, where: str) -> Principal:
    """A Principal from a case: a name from `principals` or an inline {id, attributes, chain}."""
    base = _actor(spec, named, where)
    raw_chain = chain if chain is not None else (named.get(spec, {}) if isinstance(spec, str) else spec).get("chain")
    actors = tuple(_actor(a, named, where) for a in raw_chain or ())
    return Principal(id=base.id, issuer="test", subject=base.id, attributes=base.attributes, chain=actors)


def tool_from(name: Any, overrides: Any, tools: dict[str, Any], where: str) -> ToolInfo:
    """A ToolInfo for `upstream/tool`, labelled from the file's `tools` map and the case's own overrides."""
    if not isinstance(name, str) or "/" not in name:
        raise CaseError(f"{where}: tool must be 'upstream/tool', got {name!r}")
    upstream, _, tool = name.partition("/")
    labels = {**(tools.get(name) or {}), **(overrides or {})}
    unknown = set(labels) - _TOOL_FIELDS
    if unknown:
        raise CaseError(f"{where}: unknown tool label(s) {sorted(unknown)}; known: {sorted(_TOOL_FIELDS)}")
    return ToolInfo(upstream=upstream, name=tool, **labels)


def facts_from(case: dict[str, Any], environment: str, where: str) -> E.CallFacts:
    now = case.get("now")
    when: dt.datetime | None = None
    if now is not None:
        try:
            when = now if isinstance(now, dt.datetime) else dt.datetime.fromisoformat(str(now))
        except ValueError as exc:
            raise CaseError(f"{where}: now must be an ISO date-time: {exc}") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    return E.CallFacts(args=case.get("args", {}), environment=str(case.get("environment", environment)),
                       args_contain_secret=bool(case.get("args_contain_secret", False)),
                       task=case.get("task"), now=when)


@dataclass(frozen=True)
class CaseResult:
    name: str
    ok: bool
    expected: str
    decision: Decision
    message: str = ""


def run_case(policies: LoadedPolicies, case: dict[str, Any], doc: dict[str, Any], where: str) -> CaseResult:
    """Evaluate one case and compare outcome (and `policies`, when given, as an exact set)."""
    name = str(case.get("name") or where)
    expected = case.get("expect")
    if expected not in ("allow", "deny", "approval_required"):
        raise CaseError(f"{where}: expect must be allow, deny or approval_required, got {expected!r}")
    action = str(case.get("action", "call_tool"))
    if action == "approve":
        user = case.get("user") or {}
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise CaseError(f"{where}: approve cases need user: {{id: ..., groups: [...]}}")
        decision = decide_approve(policies, user["id"], list(user.get("groups") or []), dict(case.get("approval")
                                                                                              or {}))
    else:
        principal = principal_from(case.get("principal"), doc.get("principals") or {}, case.get("chain"), where)
        tool = tool_from(case.get("tool"), case.get("labels"), doc.get("tools") or {}, where)
        facts = facts_from(case, str(doc.get("environment", "dev")), where)
        decision = decide(policies, principal, action, tool, facts, granted=bool(case.get("approved", False)))
    problems = []
    if decision.outcome != expected:
        problems.append(f"expected {expected}, got {decision.outcome}")
    want = case.get("policies")
    if want is not None and set(want) != set(decision.policy_ids):
        problems.append(f"expected policies {sorted(want)}, got {sorted(decision.policy_ids)}")
    if bool(decision.errors) != bool(case.get("expect_errors", False)):
        problems.append("errors: " + ("; ".join(decision.errors) or "none, but expect_errors is set"))
    return CaseResult(name, not problems, str(expected), decision, "; ".join(problems))


def load_cases(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CaseError(f"{path}: cannot read cases: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise CaseError(f"{path}: expected a mapping with a `cases:` list")
    return doc


def policies_dir_for(path: Path, doc: dict[str, Any], override: Path | None) -> Path:
    """--policies wins; else the file's `policies:` (relative to the file); else the parent of tests/."""
    if override is not None:
        return override
    if isinstance(doc.get("policies"), str):
        return (path.parent / str(doc["policies"])).resolve()
    return path.parent.parent if path.parent.name == "tests" else path.parent


def run_cases_file(path: Path, policies_dir: Path | None = None,
                   policies: LoadedPolicies | None = None) -> list[CaseResult]:
    """Run every case of one file (loading the policies unless given)."""
    doc = load_cases(path)
    loaded = policies or load_policies(policies_dir_for(path, doc, policies_dir))
    return [run_case(loaded, case, doc, f"{path}: cases[{i}]") for i, case in enumerate(doc["cases"])
            if isinstance(case, dict) or _bad(path, i)]


def _bad(path: Path, index: int) -> bool:
    raise CaseError(f"{path}: cases[{index}] must be a mapping")
