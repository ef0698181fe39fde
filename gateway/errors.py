"""The gateway's error family: every rejection is one JSON-RPC error with a stable code and reason.

Stages reject by raising a `GatewayError`. `to_wire` is the one place an exception becomes a
JSON-RPC error object (and an HTTP status); unknown exceptions become `internal_error` with no
internals on the wire. The table in docs/errors.md mirrors `REASONS` and is checked by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# JSON-RPC 2.0 and MCP codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
HEADER_MISMATCH: Final = -32020
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022


@dataclass(frozen=True)
class Reason:
    """One row of the documented error table."""

    code: int
    http_status: int
    message: str


# reason -> (JSON-RPC code, HTTP status, default message). Stable: agents and tests match on these.
REASONS: Final[dict[str, Reason]] = {
    "parse_error": Reason(PARSE_ERROR, 400, "Parse error"),
    "invalid_request": Reason(INVALID_REQUEST, 400, "Invalid request"),
    "batch_not_supported": Reason(INVALID_REQUEST, 400, "JSON-RPC batches are not supported"),
    "method_not_found": Reason(METHOD_NOT_FOUND, 200, "Method not found"),
    "invalid_params": Reason(INVALID_PARAMS, 200, "Invalid params"),
    "unknown_tool": Reason(INVALID_PARAMS, 200, "Unknown tool"),
    "unknown_resource": Reason(-32002, 200, "Resource not found"),
    "unknown_prompt": Reason(INVALID_PARAMS, 200, "Unknown prompt"),
    "header_mismatch": Reason(HEADER_MISMATCH, 400, "Header does not match the request body"),
    "unsupported_protocol_version": Reason(UNSUPPORTED_PROTOCOL_VERSION, 400, "Unsupported protocol version"),
    "unauthenticated": Reason(-32010, 401, "Authentication required"),
    "forbidden": Reason(-32011, 403, "Forbidden"),
    "origin_forbidden": Reason(-32012, 403, "Origin not allowed"),
    "host_forbidden": Reason(-32013, 403, "Host not allowed"),
    "body_too_large": Reason(-32014, 413, "Request body too large"),
    "unsupported_media_type": Reason(-32015, 415, "Content-Type must be application/json"),
    "not_acceptable": Reason(-32016, 406, "Accept must include application/json and text/event-stream"),
    "session_not_found": Reason(-32017, 404, "Session not found"),
    "session_required": Reason(-32018, 400, "Mcp-Session-Id header required"),
    "unknown_upstream": Reason(-32019, 404, "Unknown upstream"),
    "method_not_allowed": Reason(INVALID_REQUEST, 405, "HTTP method not allowed here"),
    "body_timeout": Reason(-32021, 408, "Request body not received in time"),
    "approval_pending": Reason(-32030, 200, "Call is waiting for approval"),
    "approval_denied": Reason(-32031, 200, "Call was denied by an approver"),
    "approval_expired": Reason(-32032, 200, "Approval expired before a decision"),
    "approval_cancelled": Reason(-32033, 200, "Pending call was withdrawn"),
    "approval_unavailable": Reason(-32034, 200, "Approval store unavailable; call not executed"),
    "upstream_unavailable": Reason(-32040, 200, "Upstream unavailable"),
    "upstream_timeout": Reason(-32041, 200, "Upstream timed out"),
    "upstream_error": Reason(-32043, 200, "Upstream returned an invalid response"),
    "rate_limited": Reason(-32050, 429, "Rate limit exceeded"),
    "policy_unavailable": Reason(-32060, 200, "Policy engine unavailable; call denied"),
    "credential_unavailable": Reason(-32061, 200, "Could not obtain a credential for the upstream"),
    "shutting_down": Reason(-32062, 503, "Gateway is shutting down"),
    "request_cancelled": Reason(-32800, 200, "Request cancelled by the client"),
    "internal_error": Reason(INTERNAL_ERROR, 500, "Internal error"),
}


class GatewayError(Exception):
    """A rejection with a stable reason; `data` is merged into the wire error's `data`."""

    def __init__(self, reason: str, message: str | None = None, *, data: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"undocumented error reason {reason!r}")
        self.reason = reason
        self.spec = REASONS[reason]
        self.message = message or self.spec.message
        self.data = data or {}
        self.headers = headers or {}
        super().__init__(f"{reason}: {self.message}")

    @property
    def code(self) -> int:
        return self.spec.code

    @property
    def http_status(self) -> int:
        return self.spec.http_status


class UpstreamErrorResponse(Exception):
    """The upstream answered with a JSON-RPC error: passed to the client unchanged (transparency)."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(f"upstream error {error.get('code')}: {error.get('message')}")

    @property
    def reason(self) -> str:
        return "upstream_rpc_error"


def error_object(exc: BaseException) -> tuple[dict[str, Any], int]:
    """Map any exception to (JSON-RPC error object, HTTP status). Nothing internal leaks."""
    if isinstance(exc, UpstreamErrorResponse):
        return exc.error, 200
    if not isinstance(exc, GatewayError):
        exc = GatewayError("internal_error")
    data = {"reason": exc.reason, **exc.data}
    return {"code": exc.code, "message": exc.message, "data": data}, exc.http_status


def forget_traceback(exc: BaseException) -> None:
    """Drop the tracebacks of an error already answered and logged (and of the errors chained to it).

    A traceback holds the frames it passed through, and those frames hold the call's objects, some of
    which hold the error (the call context, the request's span): a reference cycle per failed call,
    left to the garbage collector, unless the traceback goes once nothing needs it.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += (current.__cause__, current.__context__)


def to_wire(exc: BaseException, request_id: Any) -> tuple[dict[str, Any], int]:
    """The JSON-RPC error response for `exc` answering `request_id`, and its HTTP status."""
    error, status = error_object(exc)
    return {"jsonrpc": "2.0", "id": request_id, "error": error}, status
