"""Administrators' view of tool pins: list pinned and quarantined tools, re-approve a definition.

HTTP: `GET /api/tools` → `{"items": [...]}`; `POST /api/tools/{upstream}/{tool}/approve` with
`{"hash": "sha256:…"}` (default: the definition last seen) → the new pin. Callers authenticate
with a bearer token like approvers and must be in the group `pinning.admin_group`.
CLI: `customs tools list | approve UPSTREAM TOOL [--hash H]` against a running gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from aiohttp import web

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
        principal = await self._identifier.identify(request.headers, None)
        groups = principal.attributes.get("groups") or []
        if principal.anonymous or self._group not in groups:
            raise web.HTTPForbidden(text=json.dumps({"error": {"reason": "forbidden"}}),
                                    content_type="application/json")
        return principal.id

    async def list_tools(self, request: web.Request) -> web.Response:
        try:
            await self._admin(request)
        except GatewayError as exc:
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status, headers=exc.headers)
        items = []
        for upstream in self._upstreams:
            for tool, record in sorted((await self._guard.list(upstream)).items()):
                items.append({"upstream": upstream, "tool": tool, **record})
        return web.json_response({"items": items})

    async def approve(self, request: web.Request) -> web.Response:
        try:
            who = await self._admin(request)
        except GatewayError as exc:
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status, headers=exc.headers)
        upstream, tool = request.match_info["upstream"], request.match_info["tool"]
        if upstream not in self._upstreams:
            raise web.HTTPNotFound()
        record = (await self._guard.list(upstream)).get(tool)
        try:
            body = await timed_read(request, request.json) if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": {"reason": "invalid_request"}}, status=400)
        except GatewayError as exc:  # body_timeout
            return web.json_response({"error": {"reason": exc.reason}}, status=exc.http_status)
        digest = body.get("hash") if isinstance(body, dict) else None
        digest = digest or (record or {}).get("seen") or (record or {}).get("hash")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            return web.json_response({"error": {"reason": "unknown_tool"}}, status=404)
        pinned = await self._guard.approve(upstream, tool, digest, who)
        return web.json_response({"upstream": upstream, "tool": tool, **pinned})

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/tools", self.list_tools, allow_head=False),
                web.post("/api/tools/{upstream}/{tool}/approve", self.approve)]


def _request(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = args.token or os.environ.get("CUSTOMS_TOKEN")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _run(args: argparse.Namespace) -> int:
    try:
        if args.tools_command == "list":
            for item in _request(args, "GET", "/api/tools")["items"]:
                print(f"{item['upstream']}/{item['tool']}\t{item.get('state')}\t{item.get('hash')}"
                      + (f"\t{item.get('reason')}" if item.get("reason") else ""))
        else:
            path = f"/api/tools/{args.upstream}/{args.tool}/approve"
            print(json.dumps(_request(args, "POST", path, {"hash": args.hash} if args.hash else {}), indent=2))
        return 0
    except urllib.error.HTTPError as exc:
        print(f"customs: the gateway answered HTTP {exc.code}: {exc.read().decode(errors='replace')}",
              file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"customs: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
    return 1


def add_tools_parsers(sub: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=os.environ.get("CUSTOMS_URL", "http://127.0.0.1:8700"))
        parser.add_argument("--token", help="administrator bearer token (default: $CUSTOMS_TOKEN)")
        parser.set_defaults(func=_run)

    common(sub.add_parser("list", help="pinned and quarantined tools"))
    approve = sub.add_parser("approve", help="accept a tool's current definition (lifts a quarantine)")
    approve.add_argument("upstream")
    approve.add_argument("tool")
    approve.add_argument("--hash", help="the definition hash to accept (default: the one last seen)")
    common(approve)
