"""Token exchanges are not sent on a connection the authorization server is about to close (as upstream calls:
tests/hardening/test_upstream_idle_connections.py).

An authorization server served by uvicorn or Node closes a keep-alive connection after 5 s idle. The exchanger's own
client kept idle connections 15 s (aiohttp's default), so an exchange made 5 s after the last one could be sent just
as the server closed its connection: the POST, which aiohttp does not send again, failed and the call with it
(`credential_unavailable`). The exchanger's pool lets a connection go after UPSTREAM_IDLE_S, as the upstreams' does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.credentials import CredentialService
from tests.credentials.helpers import agent, call, make_config
from tests.support.servers import CLOSE_MARGIN_S, SERVER_KEEPALIVE_S, IdleCloser, run_aiohttp

AGENT_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"


class ClosingOnIdle(IdleCloser):
    """A token endpoint behaving as a 5 s keep-alive server when a request crosses its close."""

    def __init__(self) -> None:
        super().__init__()
        self.issued = 0

    async def token(self, request: web.Request) -> web.StreamResponse:
        await request.post()
        self.issued += 1
        return web.json_response({"access_token": f"exchanged-{self.issued}", "token_type": "Bearer",
                                  "expires_in": 120})


@pytest.fixture
async def closing_endpoint() -> AsyncIterator[tuple[ClosingOnIdle, str]]:
    server = ClosingOnIdle()
    app = web.Application()
    app.router.add_post("/token", server.wrap(server.token))
    async with run_aiohttp(app, access_log=None) as base:
        yield server, f"{base}/token"


@pytest.mark.asyncio
async def test_an_exchange_after_an_idle_spell_goes_on_a_fresh_connection(
        tmp_path: Any, clock: Any, closing_endpoint: tuple[ClosingOnIdle, str]) -> None:
    server, url = closing_endpoint
    upstreams = [{"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": {
        "mode": "token_exchange", "token_endpoint": url, "client_id": "customs", "client_secret": "s3cret-value",
        "audience": "https://crm.example"}}]
    service = CredentialService(make_config(tmp_path, upstreams), clock=clock)
    await service.start()
    try:
        first = call("crm", "find", principal=agent(AGENT_TOKEN), session_id="one")
        await service.stage(first)
        assert first.upstream_headers == {"Authorization": "Bearer exchanged-1"}
        # Not synchronisation: the connection's idle time is what is under test.
        await asyncio.sleep(SERVER_KEEPALIVE_S - CLOSE_MARGIN_S + 0.1)
        second = call("crm", "find", principal=agent(AGENT_TOKEN), session_id="two")  # another task: no cache hit
        await service.stage(second)
        assert second.upstream_headers == {"Authorization": "Bearer exchanged-2"}
        assert server.dropped == 0
    finally:
        await service.close()
