"""What approvers send the page and the API, read and checked: query parameters, form and JSON bodies.

Each reader returns the value the handlers in web.py act on or raises `Refused` with the documented 4xx
(400 for a malformed value, 408 for a body not in full within `listen.body_timeout_s`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.approvals.auth import Refused
from gateway.approvals.cursor import Cursor, InvalidCursor, decode, order_for
from gateway.approvals.model import STATES
from gateway.errors import GatewayError
from gateway.http.guards import timed_read

MAX_COMMENT = 2000
MIN_LIMIT, MAX_LIMIT = 1, 1000  # the API's `limit` (docs/approvals.openapi.yaml)
DONE = re.compile(rf"apr_[0-9a-f]{{32}} (?:{'|'.join(STATES)})")  # `?done=` after a decision


async def read_body(request: web.Request, read: Callable[[], Awaitable[Any]]) -> Any:
    """A body read under `listen.body_timeout_s`: a trickled body is Refused 408 `body_timeout`."""
    try:
        return await timed_read(request, read)
    except GatewayError as exc:
        raise Refused(exc.http_status, exc.reason, exc.message) from None


async def form(request: web.Request) -> Any:
    """A page form's fields, or Refused 400 for a body aiohttp's form reader cannot read (it used to be a 500)."""
    try:
        return await read_body(request, request.post)
    except (ValueError, LookupError):  # bytes no text in its (or an unknown) charset; a multipart with no boundary
        raise Refused(400, "invalid_body", "The form could not be read (not form data in its charset).") from None


def state_filter(request: web.Request) -> list[str] | None:
    """The `state` query parameter: `state=a,b` or `state=a&state=b` (OpenAPI's default form for a list), every
    value counting; None for all states; Refused 400 for a state the API does not know."""
    chosen = [s for s in ",".join(request.query.getall("state", [])).split(",") if s] or None
    if chosen and not set(chosen) <= set(STATES):
        raise Refused(400, "invalid_state", f"state must be one of {', '.join(STATES)}")
    return chosen


def limit(text: str) -> int:
    """The `limit` query parameter: an integer MIN_LIMIT-MAX_LIMIT as the OpenAPI file says, else Refused 400.

    Out of range is refused, not clamped (a client asking for 5000 must learn it gets at most 1000), and only
    plain ASCII digits count: `int()` alone would also take ` 5`, `+5`, `1_000` and other scripts' digits."""
    if not (text.isascii() and text.isdigit()) or not MIN_LIMIT <= int(text) <= MAX_LIMIT:
        raise Refused(400, "invalid_limit", f"limit must be an integer from {MIN_LIMIT} to {MAX_LIMIT}")
    return int(text)


def cursor(text: str | None, states: list[str] | None, key: bytes) -> Cursor | None:
    """The `cursor` query parameter: a `next_cursor` of a listing with the same `state`, else Refused 400."""
    if text is None:
        return None
    try:
        return decode(text, order_for(states), key)
    except InvalidCursor as exc:
        raise Refused(400, "invalid_cursor", str(exc)) from None


def recorded(done: str | None) -> str | None:
    """The notice after a decision: `?done=<id> <state>`, as the page's own redirect says it. Anything else is
    not shown: anyone can send an approver a link whose `done` says something else in the page's own voice."""
    return f"Recorded: {done}" if done and DONE.fullmatch(done) else None


def within_limit(comment: str | None) -> str | None:
    """A comment as written, or Refused 400: one cut short would tell the agent and the log another reason."""
    if comment is not None and len(comment) > MAX_COMMENT:
        raise Refused(400, "invalid_body", f"comment must be at most {MAX_COMMENT} characters (it has {len(comment)})")
    return comment


async def comment_from_json(request: web.Request) -> str | None:
    """The API's decision body, `{"comment": "..."}`; an empty body, `null` or a blank comment is no comment."""
    if not request.can_read_body:
        return None
    try:
        body = await read_body(request, request.json)
    # Nesting past the parser's limit too, and a Content-Type charset Python does not know (LookupError).
    except (json.JSONDecodeError, UnicodeDecodeError, LookupError, RecursionError):
        raise Refused(400, "invalid_body", 'body must be JSON: {"comment": "..."}') from None
    if body is None:  # `null`: no comment, as an empty body
        return None
    if not isinstance(body, dict):  # an array or a bare value is a mistake, never silently "no comment"
        raise Refused(400, "invalid_body", 'body must be a JSON object: {"comment": "..."}')
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise Refused(400, "invalid_body", "comment must be a string")
    # As the page's form: surrounding whitespace goes, and a blank comment is none.
    return within_limit(comment.strip() or None if comment is not None else None)
