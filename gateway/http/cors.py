"""CORS for the agent-facing paths: a browser agent on an allowed origin may call the gateway and read its answers.

The Host/Origin guard (guards.py) has already refused every Origin that is not allowed (`listen.allowed_origins`,
public_url's own) when this runs. For the paths an agent uses (`/mcp…`, legacy `/sse…` and `/messages`, the
RFC 9728 metadata) a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is
answered here, and every answer to such a request names that origin in `Access-Control-Allow-Origin` and exposes
the MCP headers a client must read (`Mcp-Session-Id`, …): the guard adds them to every answer it returns (errors
raised as aiohttp's HTTP exceptions included), and each agent-path stream before it opens (`share`), so streamed
answers (SSE) carry them too; so do the answers aiohttp's parser has the gateway make before any route (the 415
for a br or zstd body, the 400 for a header too long: edge.py), once the request's head is found again in the
bytes the parser stopped in, and aiohttp's own answer to an exception that escaped a handler (500; 504 for a
TimeoutError: edge.py), with the origin recorded on the request (`ORIGIN`). The approvers' page, its API and the
admin API are never shared with another origin.
Credentials are bearer tokens in `Authorization`, not cookies: no `Access-Control-Allow-Credentials`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web

CORS_PREFIXES = ("/mcp", "/sse", "/messages", "/.well-known/oauth-protected-resource")
ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
# What MCP clients send: the transport's own headers, W3C trace context, and a bearer token.
ALLOW_HEADERS = ("Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, "
                 "Mcp-Method, Mcp-Name, traceparent, tracestate, baggage")
EXPOSE_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate, Retry-After"
MAX_AGE_S = "600"
_TOKEN_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
ORIGIN = web.RequestKey("customs.cors_origin", str)  # set on a request whose answer names its origin


def cors_origin(headers: Mapping[str, str], path: str) -> str | None:
    """A request's Origin when its answer is shared with that origin (an agent path; the guard allowed it)."""
    origin = headers.get("Origin")
    if origin is None or origin == "null" or not path.startswith(CORS_PREFIXES):
        return None
    return origin


def preflight(request: web.Request, origin: str) -> web.Response | None:
    """The answer to a CORS preflight, or None when the request is not one."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    # The headers asked for, when they are a plain list of header names (a browser's always are).
    allowed = asked if asked and _TOKEN_LIST.fullmatch(asked) else ALLOW_HEADERS
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": allowed, "Access-Control-Max-Age": MAX_AGE_S,
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"})


def share(request: web.Request, response: web.StreamResponse) -> None:
    """Name the request's allowed origin on `response` before it is prepared: called by the guard for every
    answer it returns unprepared, and by each agent-path stream before it opens (an app-wide
    `on_response_prepare` signal would cost every call ~1 % of its instructions for the rare browser agent)."""
    origin = request.get(ORIGIN)
    if origin is not None:
        add(response, origin)


def add(response: web.StreamResponse, origin: str) -> None:
    """The CORS headers for `origin` on an answer not yet prepared (once: a preflight's own are kept)."""
    if "Access-Control-Allow-Origin" in response.headers:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers.add("Vary", "Origin")
