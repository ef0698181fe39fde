"""How a failed MCP operation is written on its span, per the OpenTelemetry MCP conventions.

`error.type` is the gateway's low-cardinality reason (docs/errors.md), or the upstream's JSON-RPC code when
the upstream answered with an error; `rpc.response.status_code` is the JSON-RPC code of the answer; the
status is ERROR whenever `error.type` is set, described by the JSON-RPC error's message after the secret
redactor: an upstream's message may quote what it was sent (a static key, a minted token) and an agent's may
carry anything, and spans leave the gateway. Callers that hold the gateway's redactor (its known secrets) pass
it; the others get the token and key patterns alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from gateway.telemetry.spans import LightSpan

AnySpan = Span | LightSpan
Redact = Callable[[Any], Any]


@functools.cache
def pattern_redactor() -> Redact:
    """Token and key patterns, no known secrets: for callers without the gateway's redactor (span descriptions,
    a decision log given none). Imported on first use, not with this module: the redactor's config models are no
    import of `customs policy ...`."""
    from gateway.credentials.redaction import Redactor
    return Redactor().redact


def error_type(exc: BaseException) -> str:
    """Low-cardinality `error.type`: the gateway reason, the upstream's JSON-RPC code, or the class name."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        if reason == "upstream_rpc_error":
            code = getattr(exc, "error", {}).get("code")
            return str(code) if code is not None else reason
        return reason
    if isinstance(exc, asyncio.CancelledError):  # the decision log's and customs.calls' reason for it too
        return "request_cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__qualname__


def error_code(exc: BaseException, *, own: bool = True) -> str | None:
    """`rpc.response.status_code`: the JSON-RPC code the request was answered with, as a string.

    `own=False` (CLIENT spans): only a code the upstream answered, never the one the gateway gives its
    agent for an upstream request that got no answer (timeout, unreachable)."""
    code = getattr(exc, "code", None) if own else None
    if code is None:
        error = getattr(exc, "error", None)
        code = error.get("code") if isinstance(error, dict) else None
    return None if code is None else str(code)


def _error_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if not isinstance(message, str):  # an upstream's JSON-RPC error: the conventions' JSONRPCError.message
        error = getattr(exc, "error", None)
        message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else type(exc).__name__


def error_description(exc: BaseException, redact: Redact | None = None) -> str:
    """The status description: the error's message with secrets replaced by [REDACTED] (`redact`: the gateway's
    redactor, known secrets included; else the token and key patterns)."""
    message = _error_message(exc)
    cleaned = (redact or pattern_redactor())(message)
    return cleaned if isinstance(cleaned, str) else pattern_redactor()(message)


def mark_error(span: AnySpan, exc: BaseException, *, own_code: bool = True, redact: Redact | None = None) -> None:
    """Set `error.type`, `rpc.response.status_code` and ERROR status (description: the error message, redacted)."""
    if not span.is_recording():
        return
    span.set_attribute("error.type", error_type(exc))
    code = error_code(exc, own=own_code)
    if code is not None:
        span.set_attribute("rpc.response.status_code", code)
    span.set_status(Status(StatusCode.ERROR, error_description(exc, redact)))


def is_tool_error(result: Any) -> bool:
    """A tool result with `isError: true`: the tool ran and reported a failure (the conventions' `tool_error`)."""
    return isinstance(result, dict) and result.get("isError") is True


def mark_tool_error(span: AnySpan) -> None:
    """A tool result with `isError: true`: `error.type=tool_error` and, as for any `error.type`, ERROR status."""
    if span.is_recording():
        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR))
