"""The authorization server's endpoints are not followed through redirects: a token request carries the agent's
own token (`subject_token`) and the gateway's actor token, a revocation request an access token, and a 307/308
would send that body, as it is, wherever the `Location` points. Like every other outbound request of the gateway
(upstreams, JWKS), a 3xx is an answer: the exchange fails (`credential_unavailable`), the revocation is not
retried, and the redirect's target is never contacted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.credentials import CredentialService
from gateway.errors import GatewayError
from tests.credentials.helpers import agent, call, make_config
from tests.credentials.test_cred_exchange import AGENT_TOKEN
from tests.credentials.upstream import bound_socket

WAIT_S = 10.0  # an upper bound for things that happen at once; never reached when the code works


class Redirecting:
    """A token and a revocation endpoint that answer `status` with Location on `elsewhere`, which records bodies."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.elsewhere: list[dict[str, Any]] = []
        self.redirected = asyncio.Queue[str]()
        self.base = self.other = ""

    def app(self) -> web.Application:
        async def redirect(request: web.Request) -> web.Response:
            self.redirected.put_nowait(request.path)
            return web.Response(status=self.status, headers={"Location": f"{self.other}{request.path}"})

        app = web.Application()
        app.router.add_post("/token", redirect)
        app.router.add_post("/revoke", redirect)
        return app

    def other_app(self) -> web.Application:
        async def record(request: web.Request) -> web.Response:
            self.elsewhere.append({"path": request.path, "form": dict(await request.post())})
            if request.path == "/token":
                return web.json_response({"access_token": "from-elsewhere", "expires_in": 120})
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/token", record)
        app.router.add_post("/revoke", record)
        return app


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    sock = bound_socket()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    runners.append(runner)
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(params=[307, 308, 302])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Redirecting]:
    state = Redirecting(request.param)
    runners: list[web.AppRunner] = []
    state.base = await _serve(state.app(), runners)
    state.other = await _serve(state.other_app(), runners)
    yield state
    for runner in runners:
        await runner.cleanup()


async def test_a_redirecting_token_endpoint_is_not_followed(tmp_path, server: Redirecting) -> None:
    upstreams = [{"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": {
        "mode": "token_exchange", "token_endpoint": f"{server.base}/token", "client_id": "customs",
        "client_secret": "s3cret"}}]
    svc = CredentialService(make_config(tmp_path, upstreams))
    await svc.start()
    try:
        with pytest.raises(GatewayError) as err:
            await svc.stage(call("crm", "find", principal=agent(AGENT_TOKEN)))
    finally:
        await svc.close()
    assert err.value.reason == "credential_unavailable"
    assert await asyncio.wait_for(server.redirected.get(), WAIT_S) == "/token"
    assert server.elsewhere == []


async def test_a_redirecting_revocation_endpoint_is_not_followed(tmp_path, server: Redirecting, endpoint) -> None:
    """The exchange works (the fixture's real token endpoint); the revocation endpoint redirects."""
    outcomes: list[tuple[str, str]] = []
    upstreams = [{"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": {
        "mode": "token_exchange", "token_endpoint": endpoint.url, "client_id": "customs",
        "client_secret": "s3cret", "revocation_endpoint": f"{server.base}/revoke"}}]
    svc = CredentialService(make_config(tmp_path, upstreams), on_revocation=lambda *o: outcomes.append(o))
    svc.exchanger.revoker.retry_delays = (0.01, 0.02)
    await svc.start()
    try:
        await svc.stage(call("crm", "find", principal=agent(AGENT_TOKEN)))
        await svc.session_ended("sess-1")
        assert await asyncio.wait_for(server.redirected.get(), WAIT_S) == "/revoke"
        assert await svc.exchanger.revoker.wait_idle(WAIT_S) == set()
    finally:
        await svc.close()
    assert server.redirected.empty()  # a redirect is the server's answer: not retried
    assert server.elsewhere == [] and outcomes == [("crm", "failed")]
