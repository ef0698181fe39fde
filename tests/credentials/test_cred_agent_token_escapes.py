"""`without_agent_token` finds the agent's token however JSON spells it: as written, with any of its characters as
a `\\u00XX` escape (either case of hex digit) or its `/` as `\\/`, in a body that also escapes non-ASCII text; a body
holding none of these is passed as it is (the fast path that skips the JSON encoding)."""

from __future__ import annotations

import json

import pytest

from gateway import jsonrpc
from gateway.context import Principal
from gateway.credentials.agent_token import without_agent_token
from gateway.credentials.redaction import AGENT_TOKEN_MARK

TOKEN = "eyJhbGciOi.J9/abc-_~+=.Zx"
AGENT = Principal(id="a", issuer="i", subject="a", token=TOKEN)


def _message(text: str) -> tuple[jsonrpc.Message, bytes]:
    body = ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": '
            '{"note": "caf\\u00e9 ' + text + '"}}}').encode()
    return jsonrpc.parse(body), body


@pytest.mark.parametrize("spelling", [
    TOKEN,
    TOKEN.replace("J", "\\u004a"),   # lower-case hex
    TOKEN.replace("J", "\\u004A"),   # upper-case hex
    TOKEN.replace("/", "\\/"),
    TOKEN.replace("~", "\\u007e").replace("+", "\\u002B"),
])
def test_every_spelling_of_the_token_is_replaced(spelling: str) -> None:
    message, body = _message(spelling)
    out = without_agent_token(message, AGENT, body)
    text = json.dumps(out.body, ensure_ascii=False)
    assert TOKEN not in text and AGENT_TOKEN_MARK in text and "café" in text


def test_a_body_without_the_token_is_left_as_it_is() -> None:
    message, body = _message("nothing secret \\u00e9\\u4e2d\\ud83d\\ude00 \\n")
    assert without_agent_token(message, AGENT, body) is message
