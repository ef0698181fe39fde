"""Protocol revisions on the wire: the version an `initialize` gets (and, on `/mcp/{upstream}`, the upstream's own
`initialize` result passed through), the 2026-07-28 envelope's results and refusals (`resultType`, caching
directives, header-mismatch errors), and what `server/discover` offers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    KNOWN_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)

from gateway import jsonrpc
from gateway.errors import GatewayError
from gateway.http.guards import REFUSED
from gateway.router import SERVER_INFO
from gateway.server_messages import carried_scrub

if TYPE_CHECKING:
    from gateway.sessions import Session


def unsupported_version(version: str) -> GatewayError:
    """The error for an `MCP-Protocol-Version` header naming no revision the gateway knows."""
    return GatewayError("unsupported_protocol_version", f"Unsupported protocol version: {version[:64]}",
                        data={"supported": list(KNOWN_PROTOCOL_VERSIONS)})


def negotiate_version(requested: Any) -> str:
    """The version the gateway answers an `initialize` with (MCP lifecycle: the requested one when
    supported, else the latest it supports). 2026-07-28 has no handshake, so it is not negotiable here."""
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


# 2026-07-28 delivers change notifications only on `subscriptions/listen` streams, which the gateway
# does not serve, so its discover result promises none (as the SDK's server derives them there).
MODERN_CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": False},
    "prompts": {"listChanged": False},
    "resources": {"subscribe": False, "listChanged": False},
    "logging": {},
    "completions": {},
}


# What /mcp (the aggregated view) says it offers: a view's initialize passes its upstream's own through instead.
AGGREGATED_CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
    "completions": {},
}
AGGREGATED_INSTRUCTIONS = ("Customs gateway: the tools of several servers, each name prefixed by its server "
                           "(by default <server>__<tool>).")


def initialize_result(session: Session) -> dict[str, Any]:
    """The `initialize` result (Streamable HTTP and legacy SSE alike): on /mcp/{upstream} the upstream's own, as
    passed through; on /mcp the gateway's."""
    if session.init_result is not None:
        return passed_through(upstream_answer(session, session.init_result), session.protocol_version)
    return {"protocolVersion": session.protocol_version, "capabilities": AGGREGATED_CAPABILITIES,
            "serverInfo": SERVER_INFO, "instructions": AGGREGATED_INSTRUCTIONS}


def upstream_answer(session: Session, result: dict[str, Any]) -> dict[str, Any]:
    """An upstream's own `initialize` answer as the session's client may get it: with the secrets the gateway holds
    taken out (Redactor.scrub_known), as from every answer and message of the upstream: a server quoting the headers
    it was opened with in its instructions or serverInfo would otherwise hand the agent the gateway's key. And with
    the credentials carried for the session (Session.carried), the token the upstream session was opened with
    among them."""
    if session.scrub is not None:
        result = session.scrub(result)
    carried = carried_scrub(session)
    return result if carried is None else carried(result)


def discover_result(server_info: Any, instructions: Any = None,
                    capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `server/discover` result: the server's identity in `_meta` (`io.modelcontextprotocol/serverInfo`, where
    2026-07-28 carries it and the SDK's client reads it), its instructions, and its capabilities (default: the
    aggregated view's)."""
    out = {"supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
           "capabilities": MODERN_CAPABILITIES if capabilities is None else capabilities,
           "resultType": "complete", "_meta": {SERVER_INFO_META_KEY: server_info}}
    if isinstance(instructions, str):
        out["instructions"] = instructions
    return out


def passed_through_discover(upstream_result: dict[str, Any]) -> dict[str, Any]:
    """`server/discover` on `/mcp/{upstream}`: the upstream's identity, instructions and capabilities, as its
    `initialize` passes them through, less what this revision cannot deliver without `subscriptions/listen`
    (list changes, subscriptions)."""
    relayed = passed_through(upstream_result, MODERN_PROTOCOL_VERSIONS[-1]).get("capabilities")
    capabilities = dict(relayed) if isinstance(relayed, dict) else {}
    for kind in ("tools", "prompts", "resources"):
        if isinstance(capabilities.get(kind), dict):
            capabilities[kind] = {**capabilities[kind], "listChanged": False}
    if isinstance(capabilities.get("resources"), dict):
        capabilities["resources"]["subscribe"] = False
    return discover_result(upstream_result.get("serverInfo"), upstream_result.get("instructions"), capabilities)


CACHEABLE = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list",
                       "resources/read", "server/discover"})


def modern_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """2026-07-28 results carry `resultType`; cacheable ones also carry caching directives. Lists
    are filtered per principal, so nothing the gateway answers may be cached publicly."""
    out = {**result, "resultType": result.get("resultType", "complete")}
    if method in CACHEABLE:
        out["ttlMs"] = 0
        out["cacheScope"] = "private"
    return out


def modern_status(reply: dict[str, Any], status: int) -> int:
    """The HTTP status of a 2026-07-28 answer: that revision's transport gives some JSON-RPC error codes
    their own (404 for -32601, 400 for -32602 …), whoever produced the error, as the SDK's server sends."""
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return ERROR_CODE_HTTP_STATUS.get(code, status) if isinstance(code, int) else status


class ModernRejection(Exception):
    def __init__(self, request_id: Any, code: int, message: str, data: Any) -> None:
        error: dict[str, Any] = {"code": code, "message": message,
                                 "data": {"reason": modern_reason(code), **(data if isinstance(data, dict) else {})}}
        body = {"jsonrpc": "2.0", "id": request_id, "error": error}
        self.response = web.Response(body=jsonrpc.dumps(body), status=ERROR_CODE_HTTP_STATUS.get(code, 400),
                                     content_type="application/json")
        self.response[REFUSED] = error["data"]["reason"]  # an edge refusal like error_response's (the metric)
        super().__init__(message)


def modern_reason(code: int) -> str:
    return {-32020: "header_mismatch", -32022: "unsupported_protocol_version",
            -32602: "invalid_params"}.get(code, "invalid_request")


# Capabilities an upstream may advertise whose methods the gateway does not relay (`tasks/*` are
# `method_not_found` on every endpoint): a pass-through `initialize` must not promise them.
UNRELAYED_CAPABILITIES = frozenset({"tasks"})


def passed_through(upstream_result: dict[str, Any], protocol_version: str) -> dict[str, Any]:
    """The upstream's own `initialize` result, as `/mcp/{upstream}` answers it: the agent's version, and
    only capabilities whose methods reach the upstream."""
    result = {**upstream_result, "protocolVersion": protocol_version}
    capabilities = result.get("capabilities")
    if isinstance(capabilities, dict) and UNRELAYED_CAPABILITIES & capabilities.keys():
        result["capabilities"] = {k: v for k, v in capabilities.items() if k not in UNRELAYED_CAPABILITIES}
    return result
