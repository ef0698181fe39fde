"""`Mcp-Param-*` headers of a stateless (2026-07-28) `tools/call`, checked against the called tool's input schema.

A tool's input schema may mark arguments with `x-mcp-header`; a client of that revision then mirrors each such
argument into an `Mcp-Param-<name>` header, so intermediaries can route on it without reading the body. The server
MUST refuse a call whose headers and body disagree (-32020 `header_mismatch`), or an intermediary routed on a value
the tool never received. The edge keeps the request's headers (`PARAM_HEADERS` in the call's extra); the authorize stage
checks them once the tool's definition is known (a tool not listed yet is learned there) and the call is not
denied, so a denied tool still answers exactly as a missing one. The rules are the MCP SDK's own server's
(`validate_mcp_param_headers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mcp.shared.inbound import MCP_PARAM_HEADER_PREFIX, X_MCP_HEADER_KEY, validate_mcp_param_headers
from multidict import CIMultiDict

from gateway.context import ToolInfo
from gateway.errors import GatewayError

PARAM_HEADERS: Final = "mcp_param_headers"  # CallContext.extra key: the request's headers (Mcp-Param-* read there)
_PREFIX: Final = MCP_PARAM_HEADER_PREFIX.lower()


def param_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The request's `Mcp-Param-*` headers, a header given twice kept twice (refused: readers would disagree)."""
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower().startswith(_PREFIX))


def check_param_headers(tool: ToolInfo, params: Mapping[str, Any], request_headers: Mapping[str, str]) -> None:
    """header_mismatch unless the request's Mcp-Param-* headers agree with the call's arguments as the tool's
    schema declares them."""
    schema = tool.definition.get("inputSchema")
    if not isinstance(schema, Mapping) or not _declares_headers(schema):
        return  # no argument is mirrored into a header: nothing to disagree (most tools)
    arguments = params.get("arguments")
    arguments = arguments if isinstance(arguments, Mapping) else {}
    headers = param_headers(request_headers)
    if not arguments and not headers:
        return  # nothing given, nothing declared can be violated
    rejection = validate_mcp_param_headers(schema, arguments, headers)
    if rejection is not None:
        raise GatewayError("header_mismatch", rejection.message)


_DECLARES: dict[int, tuple[Mapping[str, Any], bool]] = {}  # id(input schema) -> (it, whether it has x-mcp-header)


def _declares_headers(schema: Mapping[str, Any]) -> bool:
    """Whether the schema marks any argument `x-mcp-header` (without one the SDK's check finds nothing): asked on
    every stateless call, walked once per tool definition (the catalog keeps it), where the SDK's check walked the
    whole schema twice a call."""
    known = _DECLARES.get(id(schema))
    if known is not None and known[0] is schema:  # (the entry holds the schema: its id is not reused meanwhile)
        return known[1]
    found, stack = False, [schema]
    while stack and not found:
        node = stack.pop()
        if isinstance(node, Mapping):
            found = X_MCP_HEADER_KEY in node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if len(_DECLARES) >= 1024:  # definitions replaced by list changes: drop the old ones' entries
        _DECLARES.clear()
    _DECLARES[id(schema)] = (schema, found)
    return found
