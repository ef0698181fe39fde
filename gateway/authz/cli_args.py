"""The arguments of `customs policy validate|test|explain|schema|replay`, built without loading Cedar.

Every `customs` command builds the whole parser, so this module imports only the standard library: each
command's handler (gateway/authz/cli.py, which loads cedarpy, the identity code and config models) is
imported when that command runs, not for `customs version`, `--help` or another family's commands.
"""

from __future__ import annotations

import argparse
import importlib
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


def add_policy_parsers(sub: Any) -> None:
    """Register validate, test, explain, schema and replay under `customs policy`."""
    p = sub.add_parser("validate", help="parse and validate a policy directory against its schema",
                       description="Parse every *.cedar file, validate against schema.cedarschema, check @id.")
    p.add_argument("dir", type=Path, help="policy directory")
    p.add_argument("--schema", type=Path, help="validate against this schema instead of DIR/schema.cedarschema")
    p.set_defaults(func=_command("validate_cmd", "gateway.authz.validate"))

    p = sub.add_parser("test", help="run policy test cases (YAML)", description="Run the cases in each file "
                       "(or each *.yaml in a directory); non-zero exit when any case fails.")
    p.add_argument("cases", type=Path, nargs="+", metavar="CASES.yaml")
    p.add_argument("--policies", type=Path, help="policy directory (default: the file's `policies:` or ..)")
    p.set_defaults(func=_command("test_cmd"))

    p = sub.add_parser("explain", help="decide one request and show why",
                       description="Decide one tools/call offline and print outcome, policies and the context.")
    p.add_argument("--policies", type=Path, required=True)
    p.add_argument("--principal-claims", required=True, metavar="JSON|@file",
                   help="token claims: sub, tenant, owner, clearance, trust, groups, nested act")
    p.add_argument("--tool", required=True, metavar="UPSTREAM/TOOL")
    p.add_argument("--action", default="call_tool", help=f"one of {', '.join(AGENT_ACTIONS)} (default call_tool)")
    p.add_argument("--args", metavar="JSON|@file")
    p.add_argument("--context", metavar="JSON|@file",
                   help='context facts as in a policy test case\'s `context:`, e.g. {"environment": ..., '
                   '"args_contain_secret": ..., "task": {...}, "approval": "granted", '
                   '"time": {"hour": 9, "weekday": 1}}')
    p.add_argument("--annotations", metavar="JSON|@file", help='tool labels, e.g. {"read_only": true}')
    p.add_argument("--environment", default="dev")
    p.set_defaults(func=_command("explain_cmd"))

    p = sub.add_parser("schema", help="generate typed Args for the schema from tool input schemas",
                       description="Print the schema with its generated Args block rebuilt from tool input schemas.")
    p.add_argument("--config", type=Path, help="customs.yaml: policies.dir, and the upstreams to ask for their tools")
    p.add_argument("--tools-json", type=Path, help='{"<upstream>": <tools/list result>, ...}')
    p.add_argument("--policies", type=Path, help="directory holding the base schema.cedarschema")
    p.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    p.set_defaults(func=_command("schema_cmd"))

    p = sub.add_parser("replay", help="re-decide logged requests under other policies",
                       description="Re-decide each decision-log line with an authz_input; print changed decisions "
                       "grouped by policy; exit 1 when any decision changed.")
    p.add_argument("--log", type=Path, required=True, metavar="DECISIONS.jsonl")
    p.add_argument("--policies", type=Path, required=True)
    p.set_defaults(func=_command("replay_cmd"))
