"""The agent's own bearer token stays at the gateway, in what the agent writes as well as in its headers.

The credential stage drops every inbound header; this keeps the token out of message bodies too. An agent that
copies its credential into a message (`_meta`, an argument, a notification, its answer to a server's request) would
otherwise hand an upstream a token this gateway accepts as that agent. Each message is scrubbed once, as it
arrives, before anything reads it: every path to an upstream (calls, lists, passthrough, one-way messages) then
sees `AGENT_TOKEN_MARK` in its place, and so do approvals and logs. The mark is a secret pattern of the redactor, so
policy still sees `context.args_contain_secret` for arguments that held the token (the shipped policies deny
such a call to a tool that leaves the organisation, as they would have with the token itself).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway import jsonrpc
from gateway.context import Principal
from gateway.credentials.redaction import AGENT_TOKEN_MARK

_TOKEN_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]|\\/")  # an escape that may stand for a token character


def without_agent_token(message: jsonrpc.Message, principal: Principal | None,
                        body: bytes | None = None) -> jsonrpc.Message:
    """`message` with the caller's bearer token replaced by AGENT_TOKEN_MARK wherever it is written; the same object
    when it is not there. `body` (the raw request) lets most messages skip the JSON encoding the search needs."""
    token = principal.token if principal is not None else None
    if not token or len(token) < 6:
        return message
    # A bearer token (RFC 6750 b64token: letters, digits, `-._~+/=`, all within U+002B..U+007E) has no character JSON
    # must escape, and the only escapes that can stand for one of its characters are `\u002B`..`\u007E` and `\/`: a
    # body with neither and without the token's own text does not hold it (a `\n`, or a client escaping its
    # non-ASCII text as `\u00e9`, costs no JSON encoding).
    if body is not None and token.encode() not in body and _TOKEN_ESCAPE.search(body) is None:
        return message
    if token not in json.dumps(message.body, ensure_ascii=False):  # escapes read: the text as its reader has it
        return message
    return jsonrpc.Message(message.kind, _replace(message.body, token))


def _replace(value: Any, token: str) -> Any:
    if isinstance(value, str):
        return value.replace(token, AGENT_TOKEN_MARK)
    if isinstance(value, dict):
        return {_replace(k, token): _replace(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(item, token) for item in value]
    return value
