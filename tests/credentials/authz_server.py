"""A real aiohttp authorization server for token exchange tests: an RFC 8693 token endpoint that records each
request, and an RFC 7009 revocation endpoint that records each revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.credentials.upstream import bound_socket


@dataclass
class TokenEndpoint:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    reply: tuple[int, Any] = (200, {"access_token": "exchanged-1", "token_type": "Bearer", "expires_in": 120})
    # RFC 7009 revocation endpoint (`<base>/revoke`): each request lands in `revocations` as it arrives,
    # then waits for `revoke_gate` (when set) and answers `revoke_status`.
    revocations: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    revoke_status: int = 200
    revoke_gate: asyncio.Event | None = None
    # Token requests wait for `token_gate` (when set) after announcing themselves on `token_arrived`.
    token_gate: asyncio.Event | None = None
    token_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    close_connections: bool = False  # answer with Connection: close: each request opens a new connection

    @property
    def revocation_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/revoke"


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    sock = bound_socket()
    state = TokenEndpoint(f"http://127.0.0.1:{sock.getsockname()[1]}/token")

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.requests.append({"form": form, "authorization": request.headers.get("Authorization", "")})
        state.token_arrived.set()
        if state.token_gate is not None:
            await state.token_gate.wait()
        status, body = state.reply
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        body = {**body, "access_token": f"exchanged-{len(state.requests)}"} if "access_token" in body else body
        return closing(web.json_response(body, status=status))

    def closing(response: web.Response) -> web.Response:
        if state.close_connections:
            response.force_close()
        return response

    async def revoke(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.revocations.put_nowait({"form": form, "authorization": request.headers.get("Authorization", "")})
        if state.revoke_gate is not None:
            await state.revoke_gate.wait()
        return closing(web.Response(status=state.revoke_status))

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/revoke", revoke)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield state
    await runner.cleanup()
