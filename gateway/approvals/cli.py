"""`customs approvals list | show ID | approve ID | deny ID`: decide held calls on a running gateway.

Talks to the gateway's `/api/approvals` with the approver's bearer token (--token or CUSTOMS_TOKEN).
Exit codes: 0 done, 1 refused (401/403/404/409), 2 usage, 3 gateway unreachable or failing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from gateway.approvals.model import STATES

if TYPE_CHECKING:  # for annotations only: request_json imports urllib where it runs (see there)
    import urllib.error

DEFAULT_URL = "http://127.0.0.1:8700"
HINTS = {
    401: "the gateway did not accept your token: pass --token or set CUSTOMS_TOKEN to a valid approver token",
    403: "you may not decide this call (your own call, or policy does not allow you)",
    404: "no such approval id (check `customs approvals list --state all`)",
    409: "this call was already decided",
}


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def request_json(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None, *,
                 hints: dict[int, str] = HINTS, who: str = "an approver", unanswered: str | None = None) -> Any:
    """Call the gateway's admin API at --url with --token; CliError (message, exit code) when that fails.

    Shared with `customs tools`, which passes its own hints and who holds the token. `unanswered`: the hint when
    the gateway took the request but did not answer within --timeout (a change may have been made all the same).
    """
    # Here, not at the top: urllib.request brings http.client, email and ssl, and every `customs` command
    # (version, --help, policy ...) imports this module to build its parser.
    import http.client
    import urllib.error
    import urllib.request

    if args.token is not None and not args.token.strip():
        # `--token "$APPROVER_TOKEN"`, the variable unset: not CUSTOMS_TOKEN's holder, who would then have decided.
        raise CliError("--token is empty (an unset variable?); pass the token, or leave --token out to use "
                       "CUSTOMS_TOKEN", 2)
    token = args.token or os.environ.get("CUSTOMS_TOKEN")
    if not token:
        raise CliError(f"no token: pass --token or set CUSTOMS_TOKEN ({who}'s bearer token)", 2)
    _check_token(token)
    _check_url(args.url)
    url = args.url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw or b"null")
        except ValueError:  # something else answers at --url (a proxy's page, another service)
            raise CliError(f"{method} {url}: the answer is not JSON; is --url a Customs gateway?", 3) from None
    except urllib.error.HTTPError as exc:
        raise _refused(exc, method, url, path, args, hints) from None
    except TimeoutError:  # sent, but no answer in time (a connect that timed out is a URLError: unreachable)
        hint = unanswered or "the gateway is slow or busy: try again, or raise --timeout"
        raise CliError(f"{method} {url}: no answer within {args.timeout:g} s (--timeout)\n  hint: {hint}", 3) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the gateway at {args.url}: {reason}\n  hint: is `customs serve` running? "
                       "use --url to point at it", 3) from None
    except http.client.HTTPException as exc:  # a status line that is no HTTP's, an answer cut off before its end
        raise CliError(f"{method} {url}: the answer is not HTTP, or was cut off ({type(exc).__name__}); "
                       "is --url a Customs gateway?", 3) from None


def _refused(exc: urllib.error.HTTPError, method: str, url: str, path: str, args: argparse.Namespace,
             hints: dict[int, str]) -> CliError:
    """The CliError for an HTTP error answer at --url: its status, the API's reason and detail, and a hint."""
    import http.client  # loaded already (urllib.request brings it): here for the exception it names

    try:
        error = json.loads(exc.read()).get("error", {})
    except (ValueError, AttributeError, OSError, http.client.HTTPException):
        error = {}
    if not isinstance(error, dict):  # another service's error shape ({"error": "not found"})
        error = {}
    detail = error.get("message") or exc.reason
    # An anonymous gateway's refusal says what to change; "use a valid token" would contradict it.
    hint = "" if "identity.mode: anonymous" in str(detail) else hints.get(exc.code, "")
    if error.get("reason") == "already_voted":  # a 409 of a call still pending (quorum), not a decided one
        hint = "you already approved this call; it waits for another approver (quorum)"
    if exc.code in (404, 405) and not error.get("reason"):
        # Not the API's own refusal (that carries a reason): no such route, so --url is not the base URL.
        hint = (f"nothing answers {method} {path} at --url {args.url}: --url must be the gateway's base URL "
                f"(e.g. {DEFAULT_URL}), without /mcp or /approvals")
    named = f" {error['reason']}" if error.get("reason") else ""  # another service's 404 has none
    return CliError(f"{method} {url}: HTTP {exc.code}{named}: {detail}"
                    + (f"\n  hint: {hint}" if hint else ""), 1 if exc.code < 500 else 3)


@contextlib.contextmanager
def reading_answer(args: argparse.Namespace) -> Iterator[None]:
    """Around what a command reads of a gateway's JSON answer: JSON of another shape (another service at --url)
    is a CliError, exit 3, not a KeyError traceback, nor a success."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, ArithmeticError) as exc:
        raise CliError(f"{args.url}: the answer is JSON, but not what a Customs gateway sends "
                       f"({type(exc).__name__}: {exc}); is --url a Customs gateway?", 3) from None


def expect_keys(answer: Any, *keys: str) -> dict[str, Any]:
    """`answer` as a JSON object holding `keys` (inside `reading_answer`: KeyError, TypeError otherwise)."""
    if not isinstance(answer, dict):
        raise TypeError(f"a JSON {type(answer).__name__}, not an object")
    for key in keys:
        answer[key]  # a KeyError names the key that is missing
    return answer


# RFC 6750 §2.1: what an Authorization: Bearer value may hold (JWTs and opaque tokens alike).
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _check_token(token: str) -> None:
    """The token as a header can carry it: http.client refused a line break (a token file written on Windows
    leaves `\\r` in `$(cat token.txt)`) or a character outside Latin-1 with a traceback. The token is a secret:
    only the character at fault is named."""
    if _BEARER.fullmatch(token):
        return
    at = next((i for i, c in enumerate(token) if not _BEARER.fullmatch(c)), len(token) - 1)
    raise CliError(f"--token (or CUSTOMS_TOKEN) is not a bearer token: it holds {token[at]!r} at position {at + 1} "
                   "(a bearer token is letters, digits and -._~+/ only, then any '='; was a line break or a space "
                   "copied with it?)", 2)


def _check_url(url: str) -> None:
    """--url, before any request: urllib's own errors for these are tracebacks (ValueError, InvalidURL)."""
    if not url.lower().startswith(("http://", "https://")):
        raise CliError(f"--url {url!r} is not an http(s) URL (e.g. {DEFAULT_URL})", 2)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- reading it raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise CliError(f"--url {url!r}: {exc} (e.g. {DEFAULT_URL})", 2) from None
    if not parts.hostname:
        raise CliError(f"--url {url!r} names no host (e.g. {DEFAULT_URL})", 2)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise CliError(f"--url {url!r} contains spaces or control characters (e.g. {DEFAULT_URL})", 2)


def nonempty(text: str) -> str:
    """An id or name argument: an empty one would address the collection, not an item."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _age(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def shown(value: Any) -> str:
    """Text from the gateway as a terminal line: tool names, principals and comments come from upstreams, agents
    and approvers, and a control character in them (an ANSI escape, a carriage return) could rewrite what the
    person reads, so each is printed as its escape (`\\x1b`)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _fate(item: dict[str, Any]) -> str:
    """The `expires in` line of a pending item; a decided one no longer expires, so its decision and when."""
    if item["state"] == "pending":
        left = int(item["expires_at"] - time.time())
        # Past its expiry until the store's sweep marks it expired (within about 5 s), as the page says.
        return f"expires in:  {left}s" if left >= 0 else f"expires:     {-left}s ago"
    when = f" {_age(item['decided_at'])} ago" if isinstance(item.get("decided_at"), (int, float)) else ""
    return f"decided:     {shown(item['state'])}{when}"


def _what(item: dict[str, Any]) -> str:
    """After the tool's name: nothing for a tool call, else the request (a prompt and a tool may share a name)."""
    method = item.get("method") or "tools/call"
    return "" if method == "tools/call" else f" ({shown(method)})"


def _votes(item: dict[str, Any]) -> str:
    """A call that needs several approvers: how many approved so far, and who (as the page says it)."""
    quorum = item.get("quorum")
    if not isinstance(quorum, int) or quorum <= 1:
        return ""
    votes = [v for v in item.get("votes") or [] if isinstance(v, dict)]
    approvers = [shown(v.get("by")) for v in votes if v.get("outcome") == "approved"]
    return f"approvals:   {len(approvers)} of {quorum}" + (f" ({', '.join(approvers)})" if approvers else "") + "\n"


def _item_text(item: dict[str, Any]) -> str:
    chain = " → ".join(shown(c) for c in item.get("chain") or []) or "—"
    decided_by = item.get("decided_by")
    decided = ", ".join(map(shown, decided_by)) if isinstance(decided_by, list) else shown(decided_by or "—")
    return (f"id:          {shown(item['id'])}\nstate:       {shown(item['state'])}\n"
            f"tool:        {shown(item['upstream'])}/{shown(item['tool'])}{_what(item)}\n"
            f"agent:       {shown(item['principal'])}\nchain:       {chain}\n"
            f"tenant:      {shown(item.get('tenant') or '—')}\n"
            f"policies:    {', '.join(shown(p) for p in item.get('policies') or []) or '—'}\n"
            f"created:     {_age(item['created_at'])} ago\n"
            f"{_fate(item)}\n{_votes(item)}"
            f"decided by:  {decided}\ncomment:     {shown(item.get('comment') or '—')}\n"
            f"args_digest: {shown(item['args_digest'])}\narguments:\n{json.dumps(item.get('args'), indent=2)}")


def _pages(args: argparse.Namespace, query: dict[str, str]) -> tuple[list[Any], str | None]:
    """The listing's items from --cursor (or the first page) on, every page with --all; and the next_cursor after
    the last page read (None: nothing left)."""
    items: list[Any] = []
    cursor, followed = args.cursor, set()
    while True:
        paged = {**query, "cursor": cursor} if cursor else query
        answer = request_json(args, "GET", "/api/approvals?" + urlencode(paged))
        with reading_answer(args):
            page = expect_keys(answer, "items")
            cursor = page.get("next_cursor")
            if not isinstance(page["items"], list) or not (cursor is None or (isinstance(cursor, str) and cursor)):
                raise TypeError("items is not a list, or next_cursor not a string")
            items.extend(page["items"])
        if cursor is None or not args.all:
            return items, cursor
        if cursor in followed:  # a gateway (or something else at --url) going round in circles: never end
            raise CliError(f"{args.url}: the answer repeats a next_cursor it gave before; is --url a Customs "
                           "gateway?", 3)
        followed.add(cursor)


def list_command(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.state != "all":
        query["state"] = args.state
    items, more = _pages(args, query)
    with reading_answer(args):
        if args.json:
            print(json.dumps(items, indent=2))
        elif not items:
            states = "" if args.state == "all" else " or ".join(args.state.split(",")) + " "
            print(f"no {states}approvals" + (" in this page" if more is not None else ""))
        else:
            rows = [f"{shown(item['id']):38} {shown(item['state']):9} {_age(item['created_at']):>5}  "
                    f"{shown(item['upstream'] + '/' + item['tool']) + _what(item):28} {shown(item['principal'])}"
                    for item in items]
            print(f"{'ID':38} {'STATE':9} {'AGE':>5}  {'TOOL':28} AGENT")
            print("\n".join(rows))
    if more is not None:  # on stderr: stdout stays the items alone (--json parses as it did)
        print(f"more after these: add --cursor {more} for the next page (or --all for every page)", file=sys.stderr)
    return 0


def show_command(args: argparse.Namespace) -> int:
    item = request_json(args, "GET", f"/api/approvals/{quote(args.id, safe='')}")
    with reading_answer(args):
        expect_keys(item, "id", "state")
        print(json.dumps(item, indent=2) if args.json else _item_text(item))
    return 0


def _decide(args: argparse.Namespace, action: str) -> int:
    item = request_json(args, "POST", f"/api/approvals/{quote(args.id, safe='')}/{action}", {"comment": args.comment},
                        unanswered=f"the decision may have been recorded all the same: check with "
                                   f"`customs approvals show {shown(args.id)}` before deciding again")
    with reading_answer(args):
        expect_keys(item, "id", "state")
        if args.json:
            print(json.dumps(item, indent=2))
        elif item["state"] == "pending":
            quorum = shown(item.get("quorum"))
            print(f"{shown(item['id'])}: vote recorded; waiting for more approvals (quorum {quorum})")
        else:  # decided_by names every approver of a quorum, as their tokens spell them
            print(f"{shown(item['id'])}: {shown(item['state'])} by {shown(item.get('decided_by'))}")
    return 0


def approve_command(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def deny_command(args: argparse.Namespace) -> int:
    return _decide(args, "deny")


def guard(command: Any) -> Any:
    """Run a command, printing a CliError as `error: ...` and exiting with its code."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code

    run.__name__ = command.__name__
    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("CUSTOMS_URL", DEFAULT_URL),
                        help=f"gateway base URL (default {DEFAULT_URL}, or CUSTOMS_URL)")
    parser.add_argument("--token", help="approver bearer token (default: CUSTOMS_TOKEN environment variable)")
    parser.add_argument("--timeout", type=seconds, default=10.0, help="HTTP timeout in seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


def seconds(text: str) -> float:
    """--timeout: a finite number of seconds above zero (0 would make the socket non-blocking, not patient)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, e.g. 10: {text!r}")
    return value


def _states(text: str) -> str:
    """--state: `all`, or one state or a comma list of them; checked here so a typo is a usage error (exit 2)
    naming the option, not a gateway refusal (exit 1)."""
    parts = [part.strip() for part in text.split(",")]
    if text.strip() == "all" or all(part in STATES for part in parts):
        return "all" if text.strip() == "all" else ",".join(parts)
    raise argparse.ArgumentTypeError(f"must be all, or one or more (comma-separated) of {', '.join(STATES)}: {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000: {value}")
    return value


# The exit statuses of `customs approvals …` and `customs tools …` (docs/approvals.md, "CLI").
EXIT_STATUS = ("exit status:\n  0 done\n  1 refused by the gateway (401, 403, 404, 409), with a hint\n"
               "  2 usage (no token, a bad --url, --timeout or token, ...)\n"
               "  3 gateway unreachable, failing or no Customs gateway (no answer within --timeout included)")


def _parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, epilog=EXIT_STATUS,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_approvals_parsers(sub: Any) -> None:
    """Register list/show/approve/deny under an `approvals` subparsers object (each sets `func`)."""
    p = _parser(sub, "list", "list approvals (pending by default)")
    p.add_argument("--state", type=_states, default="pending",
                   help="pending|approved|denied|expired|cancelled|abandoned|all (comma list allowed)")
    p.add_argument("--limit", type=_positive, default=100, metavar="N",
                   help="at most this many a page (1-1000, default 100); with --all, the size of each page")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--all", action="store_true",
                       help="every matching approval, oldest included: follow the API's next_cursor page after "
                            "page (newest first, each listed once even while new calls are held meanwhile)")
    pages.add_argument("--cursor", type=nonempty, default=None,
                       help="the page after a previous one: the cursor it printed (on stderr) as "
                            "'--cursor ...', used with the same --state")
    _common(p)
    p.set_defaults(func=guard(list_command))
    p = _parser(sub, "show", "show one approval with its arguments")
    p.add_argument("id", type=nonempty, metavar="ID", help="the approval's id (apr_…), as list prints it")
    _common(p)
    p.set_defaults(func=guard(show_command))
    for name, command in (("approve", approve_command), ("deny", deny_command)):
        p = _parser(sub, name, f"{name} a pending call")
        p.add_argument("id", type=nonempty, metavar="ID", help="the approval's id (apr_…), as list prints it")
        p.add_argument("--comment", "-m", default=None, metavar="TEXT",
                       help="why (shown to the agent and in the decision log)")
        _common(p)
        p.set_defaults(func=guard(command))
