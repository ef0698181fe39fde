"""Administrators' view of tool pins: list pinned and quarantined tools, re-approve a definition.

HTTP: `GET /api/tools` → `{"items": [...]}`; `POST /api/tools/{upstream}/{tool}/approve` with
`{"hash": "sha256:…"}` (default: the definition last seen) → the new pin. Callers authenticate
with a bearer token like approvers and must be in the group `pinning.admin_group`.
The CLI, `customs tools list | approve UPSTREAM TOOL [--hash H]`, is gateway/tools_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web

from gateway.approvals.auth import ANONYMOUS_MODE, QUERY_TOKEN
from gateway.config.model import pin_digest
from gateway.errors import GatewayError
from gateway.http.guards import timed_read
from gateway.pinning import ToolGuard
from gateway.pipeline import Identifier


class ToolsAdmin:
    def __init__(self, guard: ToolGuard, identifier: Identifier, upstreams: Iterable[str], admin_group: str) -> None:
        self._guard = guard
        self._identifier = identifier
        self._upstreams = list(upstreams)
        self._group = admin_group

    async def _admin(self, request: web.Request) -> str:
        if "access_token" in request.query:  # as the approvals API refuses it (approvals/auth.py)
            raise GatewayError("unauthenticated", QUERY_TOKEN,
                               headers={"WWW-Authenticate": 'Bearer error="invalid_request"'})
        principal = await self._identifier.identify(request.headers, None)
        groups = principal.attributes.get("groups") or []
        if principal.anonymous or self._group not in groups:
            message = (ANONYMOUS_MODE.format(who="administer tools") if principal.anonymous
                       else f"not in the administrators' group {self._group!r}")
            raise web.HTTPForbidden(text=json.dumps({"error": {"reason": "forbidden", "message": message}}),
                                    content_type="application/json")
        return principal.id

    async def list_tools(self, request: web.Request) -> web.Response:
        try:
            await self._admin(request)
        except GatewayError as exc:
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status, headers=exc.headers)
        items = []
        try:
            for upstream in self._upstreams:
                for tool, record in sorted((await self._guard.list(upstream)).items()):
                    items.append({"upstream": upstream, "tool": tool, **record})
        except GatewayError as exc:
            return _unavailable(exc)
        return web.json_response({"items": items})

    async def approve(self, request: web.Request) -> web.Response:
        try:
            who = await self._admin(request)
        except GatewayError as exc:
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status, headers=exc.headers)
        upstream, tool = request.match_info["upstream"], request.match_info["tool"]
        if upstream not in self._upstreams:
            return web.json_response({"error": {"reason": "unknown_tool", "message": f"no upstream {upstream!r}"}},
                                     status=404)
        try:
            record = (await self._guard.list(upstream)).get(tool)
        except GatewayError as exc:
            return _unavailable(exc)
        try:
            body = await timed_read(request, request.json) if request.can_read_body else {}
        # json.loads raises RecursionError on deep nesting; an unknown Content-Type charset is a LookupError.
        except (ValueError, LookupError, RecursionError):
            return web.json_response({"error": {"reason": "invalid_request"}}, status=400)
        except GatewayError as exc:  # body_timeout
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status)
        # Only an empty object (or no body, or null) means "the definition last seen": a bare hash string, an
        # array, an empty or null hash (a script's unset variable) or a misspelt key must not silently pin
        # whatever the upstream serves now instead of the definition the admin checked.
        if body is not None and (not isinstance(body, dict) or set(body) - {"hash"}):
            return web.json_response({"error": {"reason": "invalid_request",
                                                "message": 'body must be a JSON object: {"hash": "sha256:..."}'}},
                                     status=400)
        digest = body.get("hash") if body else None
        if body:  # a hash no definition has would pin nothing and quarantine the tool again at its next list
            digest = pin_digest(digest) if isinstance(digest, str) else None
            if digest is None:
                return web.json_response({"error": {"reason": "invalid_request",
                                                    "message": "hash must be sha256: and 64 hex digits"}}, status=400)
        digest = digest or (record or {}).get("seen") or (record or {}).get("hash")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            return web.json_response({"error": {"reason": "unknown_tool",
                                                "message": f"{upstream} has no tool {tool!r} seen"}}, status=404)
        try:
            pinned = await self._guard.approve(upstream, tool, digest, who)
        except GatewayError as exc:
            return _unavailable(exc)
        return web.json_response({"upstream": upstream, "tool": tool, **pinned})

    def routes(self) -> list[web.RouteDef]:
        # HEAD as GET (RFC 9110 §9.3.2), as the approvals API and the other documents answer it; it was 405 here.
        return [web.get("/api/tools", self.list_tools),
                web.post("/api/tools/{upstream}/{tool}/approve", self.approve)]


def _unavailable(exc: GatewayError) -> web.Response:
    """The pin store (Redis) could not be reached: 503 with its reason, as the approvals API answers, rather
    than aiohttp's bare 500 and a traceback for an outage the gateway already handles everywhere else."""
    return web.json_response({"error": {"reason": exc.reason, "message": exc.message}}, status=503)
