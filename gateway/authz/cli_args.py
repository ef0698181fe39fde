"""The arguments of `customs policy validate|test|explain|schema|replay`, built without loading Cedar.

Every `customs` command builds the whole parser, so this module imports only the standard library: each
command's handler (gateway/authz/cli.py, which loads cedarpy, the identity code and config models) is
imported when that command runs, not for `customs version`, `--help` or another family's commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.authz.actions import AGENT_ACTIONS

Command = Callable[[argparse.Namespace], int]


def _command(name: str, module: str = "gateway.authz.cli") -> Command:
    """`<module>.<name>`, imported when the command runs."""
    def run(args: argparse.Namespace) -> int:
        command: Command = getattr(importlib.import_module(module), name)
        return command(args)

    run.__name__ = name
    return run


def text(value: str) -> str:
    """A text option's value: refused (a usage error, exit 2) when it is not UTF-8. A shell passes any bytes as
    they are, and Python reads those that are not UTF-8 as lone surrogates, which no JSON or Cedar text holds."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8: {os.fsencode(value)!r} (pass the value as UTF-8 text)") from None
    return value


def text_or_file(value: str) -> str:
    """JSON|@file: inline JSON must be UTF-8 text (`text`); a file name may be any bytes the file system takes."""
    return value if value.startswith("@") else text(value)


def _parser(sub: Any, name: str, help_text: str, description: str, exits: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its exit statuses (docs/policies.md, "Command line")."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description, epilog=f"exit status:\n{exits}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="customs.yaml: build principals from claims as the gateway's identify does (the "
                        "issuer's claims mapping, the agents registry, policies.max_chain_depth); its policies.dir "
                        "and environment are the defaults")


def add_policy_parsers(sub: Any) -> None:
    """Register validate, test, explain, schema and replay under `customs policy`."""
    _add_validate(sub)
    _add_test(sub)
    _add_explain(sub)
    _add_schema(sub)
    _add_replay(sub)


def _add_validate(sub: Any) -> None:
    p = _parser(sub, "validate", "parse and validate a policy directory against its schema",
                "Parse every *.cedar file, validate against schema.cedarschema, check @id; every problem is\n"
                "printed as file:line.", "  0 valid\n  1 invalid (each problem listed)")
    p.add_argument("dir", type=Path, metavar="DIR", help="policy directory")
    p.add_argument("--schema", type=Path, metavar="FILE",
                   help="validate against this schema instead of DIR/schema.cedarschema")
    p.set_defaults(func=_command("validate_cmd", "gateway.authz.validate"))


def _add_test(sub: Any) -> None:
    p = _parser(sub, "test", "run policy test cases (YAML)",
                "Run the cases in each file (or each *.yaml in a directory).",
                "  0 every case passed\n  1 a case failed\n"
                "  2 unusable input (a case file, the policies or the config)")
    p.add_argument("cases", type=Path, nargs="+", metavar="CASES.yaml", help="case files or directories of them")
    p.add_argument("--policies", type=Path, metavar="DIR",
                   help="policy directory (default: --config's policies.dir, else the file's `policies:`, else "
                   "the parent of a tests/ directory, else the file's own)")
    _config_option(p)
    p.set_defaults(func=_command("test_cmd", "gateway.authz.cases_cmd"))


def _add_explain(sub: Any) -> None:
    p = _parser(sub, "explain", "decide one request and show why",
                "Decide one request offline and print outcome, policies, errors, the members evaluated and\n"
                "the context.", "  0 decided (whatever the outcome)\n  1 not decided: with --config, identify "
                "would refuse the token (401)\n  2 bad input")
    p.add_argument("--policies", type=Path, metavar="DIR",
                   help="policy directory (required unless --config names one: its policies.dir)")
    _config_option(p)
    p.add_argument("--principal-claims", required=True, metavar="JSON|@file", type=text_or_file,
                   help="token claims: sub, tenant, owner, clearance, trust, groups, nested act")
    p.add_argument("--tool", required=True, metavar="UPSTREAM/TOOL", type=text,
                   help="the tool (or prompt name, resource URI) as upstream/name")
    p.add_argument("--action", default="call_tool", type=text,
                   help=f"one of {', '.join(AGENT_ACTIONS)} (default call_tool)")
    p.add_argument("--args", metavar="JSON|@file", type=text_or_file, help="the call's arguments, a JSON object")
    p.add_argument("--context", metavar="JSON|@file", type=text_or_file,
                   help='context facts as in a policy test case\'s `context:`, e.g. {"environment": ..., '
                   '"args_contain_secret": ..., "task": {...}, "approval": "granted", '
                   '"time": {"hour": 9, "weekday": 1}}')
    p.add_argument("--annotations", metavar="JSON|@file", type=text_or_file,
                   help='tool labels, e.g. {"read_only": true}; over --config\'s upstreams[].tools labels')
    p.add_argument("--environment", metavar="ENV", type=text,
                   help="context.environment unless --context sets it (default: --config's environment, else dev)")
    p.set_defaults(func=_command("explain_cmd"))


def _add_schema(sub: Any) -> None:
    p = _parser(sub, "schema", "generate typed Args for the schema from tool input schemas",
                "Print the schema with its generated Args block rebuilt from tool input schemas.",
                "  0 written\n  2 bad input (an upstream that cannot be listed, a malformed tool, a base schema "
                "the block\n    cannot go into)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="customs.yaml: policies.dir, and the upstreams to ask for their tools")
    p.add_argument("--tools-json", type=Path, metavar="FILE", help='{"<upstream>": <tools/list result>, ...}')
    p.add_argument("--policies", type=Path, metavar="DIR", help="directory holding the base schema.cedarschema")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_command("schema_cmd"))


def _add_replay(sub: Any) -> None:
    p = _parser(sub, "replay", "re-decide logged requests under other policies",
                "Re-decide each decision-log line with an authz_input; print changed decisions grouped by\n"
                "policy.", "  0 no decision changed\n  1 some decision changed\n"
                "  2 bad input (unreadable log, no replayable line, invalid policies)")
    p.add_argument("--log", type=Path, required=True, metavar="DECISIONS.jsonl",
                   help="a decision log (JSON lines); - reads standard input")
    p.add_argument("--policies", type=Path, required=True, metavar="DIR", help="the policies to replay under")
    p.set_defaults(func=_command("replay_cmd"))
