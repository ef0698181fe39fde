"""Token exchanges are not sent on a connection the authorization server is about to close (as upstream calls:
tests/hardening/test_upstream_idle_connections.py).

An authorization server served by uvicorn or Node closes a keep-alive connection after 5 s idle. The exchanger's own
client kept idle connections 15 s (aiohttp's default), so an exchange made 5 s after the last one could be sent just
as the server closed its connection: the POST, which aiohttp does not send again, failed and the call with it
(`credential_unavailable`). The exchanger's pool lets a connection go after UPSTREAM_IDLE_S, as the upstreams' does.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.credentials import CredentialService
from tests.credentials.helpers import agent, call, make_config
from tests.credentials.upstream import bound_socket

SERVER_KEEPALIVE_S = 5.0  # uvicorn's and Node's default
CLOSE_MARGIN_S = 0.5  # the server's close timer firing as the request crosses it, under load
AGENT_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"


class ClosingOnIdle:
    """A token endpoint that drops a connection a request arrives on after it sat idle
    `SERVER_KEEPALIVE_S - CLOSE_MARGIN_S`: what a 5 s keep-alive server does when the request crosses its close."""

    def __init__(self) -> None:
        self.idle_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self.issued = 0
        self.dropped = 0

    async def token(self, request: web.Request) -> web.Response:
        since = self.idle_since.get(request.transport)
        if since is not None and time.monotonic() - since >= SERVER_KEEPALIVE_S - CLOSE_MARGIN_S:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError()
        try:
            await request.post()
            self.issued += 1
            return web.json_response({"access_token": f"exchanged-{self.issued}", "token_type": "Bearer",
                                      "expires_in": 120})
        finally:
            self.idle_since[request.transport] = time.monotonic()


@pytest.fixture
async def closing_endpoint() -> AsyncIterator[tuple[ClosingOnIdle, str]]:
    server = ClosingOnIdle()
    sock = bound_socket()
    app = web.Application()
    app.router.add_post("/token", server.token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield server, f"http://127.0.0.1:{sock.getsockname()[1]}/token"
    await runner.cleanup()


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
