"""`customs tools list | approve UPSTREAM TOOL [--hash H]`: tool pins on a running gateway, from the command line.

Talks to the gateway's `/api/tools` (gateway/tools_admin.py serves it) with an administrator's bearer token.
Apart from the server side so that building the `customs` parser does not import aiohttp and the pin store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any
from urllib.parse import quote

from gateway.approvals.cli import (
    DEFAULT_URL,
    EXIT_STATUS,
    expect_keys,
    guard,
    nonempty,
    reading_answer,
    request_json,
    seconds,
    shown,
)

TOOLS_HINTS = {
    401: "the gateway did not accept your token: pass --token or set CUSTOMS_TOKEN to a valid administrator token",
    403: "your token is valid but not in the administrators' group (pinning.admin_group)",
    404: "no such upstream or tool (check `customs tools list`)",
}


def _row(item: dict[str, Any]) -> str:
    """UPSTREAM/TOOL, state, the pin (`-`: none, a tool never pinned), the reason, and `seen` the definition a
    quarantined tool serves now (what `tools approve --hash` accepts). Tool names and reasons come from
    upstreams: shown() keeps their control characters off the terminal."""
    cells = [f"{shown(item['upstream'])}/{shown(item['tool'])}", shown(item.get("state")),
             shown(item["hash"]) if item.get("hash") else "-"]
    if item.get("reason"):
        cells.append(shown(item["reason"]))
    if item.get("seen"):
        cells.append(f"seen {shown(item['seen'])}")
    return "\t".join(cells)


def _run(args: argparse.Namespace) -> int:
    if args.tools_command == "list":
        answer = request_json(args, "GET", "/api/tools", hints=TOOLS_HINTS, who="an administrator")
        with reading_answer(args):
            rows = [_row(item) for item in expect_keys(answer, "items")["items"]]
        for row in rows:
            print(row)
        return 0
    path = f"/api/tools/{quote(args.upstream, safe='')}/{quote(args.tool, safe='')}/approve"
    pinned = request_json(args, "POST", path, {"hash": args.hash} if args.hash else {}, hints=TOOLS_HINTS,
                          who="an administrator")
    with reading_answer(args):  # the pin the gateway made: another service's JSON is no success
        expect_keys(pinned, "upstream", "tool", "hash")
    print(json.dumps(pinned, indent=2))
    return 0


# config/upstreams.PIN_FORMAT, either case (building the parser imports no config models).
_PIN = re.compile(r"sha256:[0-9a-f]{64}", re.IGNORECASE)


def pin(text: str) -> str:
    """--hash: a definition's pin. An empty one (`--hash "$EXPECTED"`, the variable unset) sent no hash, which
    approves the definition last seen: a quarantined tool's changed one, the very one to be checked against."""
    if not _PIN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"not a definition hash: {text!r} (sha256: and 64 hex digits, as "
                                         "`customs tools list` shows it; leave --hash out to accept the one last seen)")
    return text.strip().lower()


def add_tools_parsers(sub: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=os.environ.get("CUSTOMS_URL", DEFAULT_URL),
                            help=f"gateway base URL (default {DEFAULT_URL}, or CUSTOMS_URL)")
        parser.add_argument("--token", help="administrator bearer token (default: CUSTOMS_TOKEN environment variable)")
        parser.add_argument("--timeout", type=seconds, default=30.0, help="HTTP timeout in seconds (default 30)")
        parser.set_defaults(func=guard(_run))

    raw = argparse.RawDescriptionHelpFormatter
    common(sub.add_parser("list", help="pinned and quarantined tools", epilog=EXIT_STATUS, formatter_class=raw,
                          description="List every upstream tool's pin: state (pinned | quarantined), hash\n"
                          "(- for none), reason and, for a quarantined tool, `seen`: the definition it serves\n"
                          "now (what `tools approve --hash` accepts)."))
    approve = sub.add_parser("approve", help="accept a tool's current definition (lifts a quarantine)",
                             epilog=EXIT_STATUS, formatter_class=raw,
                             description="Pin UPSTREAM's TOOL to the definition last seen (or --hash).")
    approve.add_argument("upstream", type=nonempty, metavar="UPSTREAM", help="the upstream's name in the config")
    approve.add_argument("tool", type=nonempty, metavar="TOOL", help="the tool's own name (not upstream__tool)")
    approve.add_argument("--hash", type=pin, help="the definition hash to accept (default: the one last seen)")
    common(approve)
