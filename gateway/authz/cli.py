"""`customs policy validate|test|explain|schema|replay`: write, test and explain Cedar policies offline.

Each command takes an argparse.Namespace and returns an exit code: 0 success, 1 a failed check
(invalid policies, failing cases, changed decisions), 2 unusable input (missing files, bad JSON).
Run standalone with `python -m gateway.authz.cli ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cedarpy

from gateway.approvals.cli import shown
from gateway.authz import evaluate
from gateway.authz.argnames import schema_totals
from gateway.authz.casefields import Refused, check_task_names
from gateway.authz.cases import (
    CaseError,
    agent_action,
    facts_from,
    principal_from_claims,
    tool_from,
)
from gateway.authz.cli_args import add_policy_parsers
from gateway.authz.entities import context, members
from gateway.authz.jsonargs import explain_json as _explain_json
from gateway.authz.jsonargs import json_arg as _json_arg
from gateway.authz.jsonargs import json_object as _json_object
from gateway.authz.policyset import SCHEMA_FILE, PolicyLoadError, load_policies, policy_files
from gateway.authz.record import from_authz_input
from gateway.authz.replayargs import ArgumentReaders, recorded_errors_hinge, redacted_args
from gateway.authz.schemagen import apply_block, check_tool, schema_from_input_schemas
from gateway.authz.validate import load_or_report as _load
from gateway.authz.visibility import listed
from gateway.config.load import unreadable
from gateway.identity.chain import RepeatedAgentError, claim_mapping


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def explain_cmd(args: argparse.Namespace) -> int:
    from gateway.authz.configured import for_command
    found = for_command(args.config, args.policies)
    if found is None:
        return 2
    deployment, policies_dir = found
    if policies_dir is None:
        _err("explain needs --policies DIR (or --config customs.yaml: its policies.dir)")
        return 2
    loaded = _load(policies_dir)
    if loaded is None:
        return 2
    environment = args.environment if args.environment is not None else \
        deployment.environment if deployment is not None else "dev"
    try:
        claims = _explain_json(args.principal_claims, "--principal-claims")
        if not isinstance(claims, dict):
            raise CaseError("--principal-claims must be a JSON object")
        # `trust` as a claim too without a config: nothing says where trust comes from (the registry, a mapping).
        action = agent_action(args.action, "--action")
        principal = principal_from_claims(claims, claim_mapping({"trust": "trust"}), "--principal-claims") \
            if deployment is None else None
        tool_from(args.tool, {}, {}, "--tool", action)  # the name first: a bad label is the option --annotations'
        tool = tool_from(args.tool, _json_object(args.annotations, "--annotations"),
                         {args.tool: deployment.labels(args.tool, action)} if deployment else {}, "--annotations",
                         action)
        # The same context facts as a policy test case's `context:` (unknown keys are an error).
        call_args, stated = _json_object(args.args, "--args"), _json_object(args.context, "--context")
        given = deployment.call_context(args.tool, action, call_args, stated) if deployment else stated
        facts, granted = facts_from({"args": call_args, "context": given}, environment, "--context")
        check_task_names(stated.get("task"), schema_totals(loaded.schema), "--context")
        if principal is None and deployment is not None:  # last: a refused token is no reason to skip bad input
            principal = deployment.principal(claims, "--principal-claims")
    except (CaseError, TypeError) as exc:
        _err(str(exc))
        return 2
    except Refused as exc:  # what the agent would get: nothing decided
        print(json.dumps({"outcome": "unauthenticated", "http_status": 401, "stage": "identify",
                          "message": exc.message}, indent=2, sort_keys=True))
        _err(f"--principal-claims: {exc}")
        return 1
    assert principal is not None
    decision = evaluate.decide(loaded, principal, action, tool, facts, granted=granted)
    report: dict[str, Any] = {
        "outcome": decision.outcome, "policies": list(decision.policy_ids), "errors": list(decision.errors),
        # The same, by the names of the decision log's record (and the spans' customs.decision / policy_ids).
        "decision": decision.outcome, "policy_ids": list(decision.policy_ids),
        "policy_version": decision.policy_version,
        "evaluated_as": [m.id for m in members(principal)],
        "issuer": principal.issuer or None,  # `iss`; every member is evaluated with it
        "resource": f'Tool::"{tool.cedar_id}"',
        "context": context(principal, facts, "granted" if granted else "none"),
    }
    if action == "list_tools":  # what tools/list does with it: the list_tools decision alone is not that
        report["listed"] = listed(loaded, principal, tool, facts.environment)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _tools_json(path: Path) -> dict[str, list[dict[str, Any]]]:
    data = _json_arg(f"@{path}", "--tools-json")
    if not isinstance(data, dict):
        raise CaseError("--tools-json: expected {upstream: tools/list result or [tool, ...]}")
    out: dict[str, list[dict[str, Any]]] = {}
    for upstream, value in data.items():
        tools = value.get("tools") if isinstance(value, dict) else value
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise CaseError(f"--tools-json: {upstream}: expected a tools/list result ({{'tools': [...]}})")
        for index, tool in enumerate(tools):
            check_tool(tool, f"--tools-json: {upstream}: tools[{index}]")
        out[str(upstream)] = tools
    return out


def _live_tools(config: Any) -> dict[str, list[dict[str, Any]]]:
    import asyncio

    from gateway.authz.live_tools import ToolListError, fetch_tools
    try:
        listed = asyncio.run(fetch_tools(config))
    except ToolListError as exc:
        raise CaseError(f"could not list the upstreams' tools: {exc}") from exc
    for upstream, tools in listed.items():  # what --tools-json refuses by name, an upstream may list too
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise CaseError(f"{upstream}: tools[{index}]: a tool must be a JSON object")
            check_tool(tool, f"{upstream}: tools[{index}]")
    return listed


def _base_schema(policies_dir: Path | None) -> tuple[Path, str] | None:
    """The schema `policy schema` puts the generated block into, as (path, text); None after saying why not.

    A directory without one gets the shipped schema: the generated block alone declares no entity type or action,
    so no policy written from the contract's names would validate against it."""
    from gateway.config.load import shipped_policies

    path = (policies_dir or Path("policies")) / SCHEMA_FILE
    if not path.exists():
        shipped = shipped_policies() / SCHEMA_FILE
        print(f"note: {path} not found; starting from the shipped schema ({shipped})", file=sys.stderr)
        path = shipped
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _err(f"cannot read {path}: {unreadable(exc)}")
        return None
    if not text:
        print(f"warning: {path} is empty; printing only the generated block", file=sys.stderr)
    return path, text


def schema_cmd(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config

    policies_dir: Path | None = args.policies
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            _err(f"{exc.source}: invalid configuration\n" + "\n".join(f"  {p}" for p in exc.problems))
            return 2
        policies_dir = policies_dir or config.policies.dir
    if policies_dir is not None and not policies_dir.is_dir():
        # A named directory that is not there is a typo, not a new schema: printing (or with -o writing over the
        # real schema) the generated block alone would lose the base schema's entities and actions.
        _err(f"{policies_dir}: not a directory")
        return 2
    try:
        if args.tools_json is not None:
            tools = _tools_json(args.tools_json)
        elif args.config is not None:
            tools = _live_tools(config)
        else:
            _err("pass --config customs.yaml (its upstreams are asked for their tools) or --tools-json FILE")
            return 2
        block = schema_from_input_schemas(tools)
    except CaseError as exc:
        _err(str(exc))
        return 2
    found = _base_schema(policies_dir)
    if found is None:
        return 2
    base_path, base = found
    try:
        text = apply_block(base, block) if base else block + "\n"
    except ValueError as exc:
        _err(f"{base_path}: {exc}")
        return 2
    try:  # as the gateway will load it: a schema that does not parse would refuse every policy at the next start
        cedarpy.Schema.from_str(text)
    except ValueError as exc:
        _err(f"{base_path}: with the generated block the schema would not parse, so nothing was written: {exc}")
        return 2
    if args.output is not None:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            _err(f"--output: cannot write {args.output}: {exc.strerror or exc}")
            return 2
        print(f"wrote {args.output}", file=sys.stderr)
        _check_against(policies_dir or Path("policies"), args.output)
    else:
        sys.stdout.write(text)
    return 0


def _check_against(directory: Path, schema: Path) -> None:
    """Warn when the directory's policies do not validate against the schema just written: the schema is right (it
    is the tools' truth), but a policy reading an argument a tool no longer has would keep a watching gateway on
    its last good set and the next start from starting. Every problem is named, as `policy validate` names them."""
    if not any(policy_files(directory)):
        return
    try:
        load_policies(directory, schema)
    except PolicyLoadError as exc:
        print(f"warning: the policies in {directory} do not validate against {schema}: fix them before the gateway "
              "loads this schema\n" + "\n".join(f"  {p}" for p in exc.problems), file=sys.stderr)


def _recorded(record: dict[str, Any]) -> tuple[str, list[str]]:
    """The recorded outcome and determining @ids; ValueError when they are not a decision's (nothing to compare)."""
    decision = record.get("decision")
    if isinstance(decision, dict):
        outcome, ids = decision.get("outcome"), decision.get("policy_ids")
    else:
        outcome, ids = decision or record.get("outcome"), record.get("policy_ids")
    ids = [] if ids is None else ids
    if outcome not in ("allow", "deny", "approval_required") or not isinstance(ids, list) \
            or not all(isinstance(i, str) for i in ids):
        raise ValueError("not a recorded decision")
    return str(outcome), ids


def decided_with_approval(outcome: str, approved: bool) -> bool:
    """Was the recorded decision made with `context.approval == "granted"`?

    A call released by an approval is decided twice: first without approval (approval_required), then
    re-checked with it. Its record keeps the first decision, or the re-check's deny when that refused it,
    while `authz_input.approved` says the call was approved. Only a decision without approval can be
    approval_required, so such a record is replayed without approval; anything else as the snapshot says.
    The re-check needs no replay of its own: an approval_required decision is one whose evaluation with
    approval allows (evaluate._evaluate), so a changed re-check changes the first decision too.
    """
    return approved and outcome != "approval_required"


def _print_replay(groups: dict[str, list[str]], undetermined: list[str], redacted: bool) -> None:
    for policy in sorted(groups):
        print(f"{policy}: {len(groups[policy])} changed")
        for entry in groups[policy]:
            print(f"  {entry}")
    if undetermined:
        print(f"undetermined: {len(undetermined)} (these policies read context.args, which the log does not "
              "hold: enable decision_log.include_args to replay them" + ("; a value the log redacted stays unknown"
                                                                         if redacted else "") + ")")
        for entry in undetermined:
            print(f"  {entry}")


def _skipped(number: int, exc: Exception, not_text: tuple[int, UnicodeDecodeError] | None,
             ) -> tuple[int, UnicodeDecodeError] | None:
    """Why replay skips line `number` (`exc`): the first line that is not UTF-8 is kept (`not_text`, named when
    nothing replays); an agent named twice with two sets of attributes is a warning."""
    if isinstance(exc, UnicodeDecodeError):
        return not_text or (number, exc)
    if isinstance(exc, RepeatedAgentError):  # decided with one of the agent's two sets of attributes, never now
        print(f"warning: line {number}: skipped: {exc} (the gateway refuses such a token at identify, "
              "before any policy)", file=sys.stderr)
    return not_text


def _log_lines(log: Path) -> list[bytes] | None:
    """The decision log's lines (`-`: standard input, a pipe from zcat …); None, said, when it cannot be read."""
    try:
        # Split at newlines only, as the log is written: orjson leaves U+2028 and U+0085 in strings unescaped,
        # which str.splitlines would cut a record at. Each line is decoded on its own, so one torn line (a
        # write cut inside a character) is one skipped line, not an unreadable log.
        return (sys.stdin.buffer.read() if str(log) == "-" else log.read_bytes()).split(b"\n")
    except OSError as exc:
        _err(f"cannot read {log}: {unreadable(exc)}")
        return None


def replay_cmd(args: argparse.Namespace) -> int:
    loaded = _load(args.policies)
    lines = _log_lines(args.log) if loaded is not None else None
    if loaded is None or lines is None:
        return 2
    groups: dict[str, list[str]] = defaultdict(list)
    undetermined: list[str] = []
    readers = ArgumentReaders(loaded)
    replayed = skipped = changed = redacted = 0
    not_text: tuple[int, UnicodeDecodeError] | None = None  # the first line that is not UTF-8
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # the end of the file, or an empty line: nothing was recorded there
        try:
            record = json.loads(line.decode("utf-8"))
            json.dumps(record, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\udcff"): not for Cedar
            principal, action, tool, facts, granted = from_authz_input(record["authz_input"], record.get("issuer"))
            old, old_ids = _recorded(record)
            agent_action(action, "authz_input.action")  # a name no policy decides would replay as a deny
        except (ValueError, KeyError, TypeError, AttributeError, CaseError) as exc:
            not_text = _skipped(number, exc, not_text)
            skipped += 1
            continue
        replayed += 1
        new = evaluate.decide(loaded, principal, action, tool, facts, granted=decided_with_approval(old, granted))
        # Ids come from tokens and tool names from upstreams: a control character in them must not reach
        # the terminal as one (an escape sequence could rewrite the lines the reader sees).
        call_text = f"line {number}: {shown(principal.id)} {action} {shown(tool.cedar_id)}"
        logged = record["authz_input"].get("args")
        hidden = None if logged is None else redacted_args(logged)  # what replay does not know (None: all)
        how = "without arguments" if hidden is None else "with redacted arguments"
        redacted += bool(hidden)
        if new.outcome == old:
            movers = readers.could_move(principal, action, tool, old, hidden) if hidden != frozenset() else []
            if movers:
                undetermined.append(f"{call_text}: {old}, unchanged {how}; {', '.join(movers)} "
                                    f"read{'s' if len(movers) == 1 else ''} them")
            continue
        entry = f"{call_text}: {old} -> {new.outcome}"
        if hidden != frozenset() and readers.may_hinge_on_args(
                old_ids, new, recorded_errors_hinge(record.get("policy_errors"), hidden), hidden):
            undetermined.append(f"{entry} (as replayed {how})")
            continue
        changed += 1
        for policy in sorted(set(old_ids) | set(new.policy_ids)) or ["(no policy: default deny)"]:
            groups[policy].append(entry)
    _print_replay(groups, undetermined, redacted > 0)
    why = "arguments not logged or redacted" if redacted else "arguments not logged"
    unknown = f", {len(undetermined)} undetermined ({why})" if undetermined else ""
    print(f"{replayed} replayed, {changed} changed, {skipped} skipped (no authz_input or not a decision){unknown}")
    if replayed == 0:
        why = f"; line {not_text[0]}: {unreadable(not_text[1])}" if not_text is not None else ""
        _err(f"{args.log}: no replayable decisions (lines need an 'authz_input' object){why}")
        return 2
    return 1 if changed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.authz.cli", description=__doc__)
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    sub.required = True
    add_policy_parsers(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
