"""The agent's own bearer token stays at the gateway, in what the agent writes as well as in its headers.

The credential stage drops every inbound header; this keeps the token out of message bodies too. An agent that
copies its credential into a message (`_meta`, an argument, a notification, its answer to a server's request) would
otherwise hand an upstream a token this gateway accepts as that agent. Each message is scrubbed once, as it
arrives, before anything reads it: every path to an upstream (calls, lists, passthrough, one-way messages) then
sees `[REDACTED]` in its place, and so do policy, approvals and logs.
"""

from __future__ import annotations

from gateway import jsonrpc
from gateway.context import Principal
from gateway.credentials.redaction import scrub_exact


def without_agent_token(message: jsonrpc.Message, principal: Principal | None,
                        body: bytes | None = None) -> jsonrpc.Message:
    """`message` with the caller's bearer token replaced by [REDACTED] wherever it is written; the same object
    when it is not there. `body` (the raw request) lets most messages skip the JSON encoding the search needs."""
    token = principal.token if principal is not None else None
    if not token:
        return message
    # A bearer token (RFC 6750 b64token: letters, digits, `-._~+/=`) has no character JSON must escape, and the only
    # escapes that can stand for one of its characters are `\uXXXX` and `\/`: a body with neither and without the
    # token's own text does not hold it (a `\n` in an argument costs no JSON encoding).
    if body is not None and token.encode() not in body and b"\\u" not in body and b"\\/" not in body:
        return message
    scrubbed = scrub_exact(message.body, [token])
    return message if scrubbed is message.body else jsonrpc.Message(message.kind, scrubbed)
