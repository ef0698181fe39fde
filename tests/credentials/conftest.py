"""Fixtures for credential tests: configs, a principal, a real aiohttp app serving the credential routes, an AS."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.credentials import CredentialService
from tests.credentials.authz_server import endpoint  # noqa: F401  (fixture: a token exchange AS)
from tests.credentials.helpers import Clock
from tests.credentials.upstream import bound_socket
from tests.support.redis import redis_factory, redis_server  # noqa: F401  (fixtures)


@dataclass
class Served:
    url: str
    service: CredentialService
    runner: web.AppRunner


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def serve_credentials() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Start a CredentialService and a real aiohttp app serving its routes on a pre-bound socket."""
    runners: list[tuple[web.AppRunner, CredentialService]] = []

    async def start(build: Callable[[int], CredentialService], sock: socket.socket | None = None) -> Served:
        sock = sock or bound_socket()
        port = sock.getsockname()[1]
        service = build(port)
        await service.start()
        app = web.Application()
        app.add_routes(service.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append((runner, service))
        await web.SockSite(runner, sock).start()
        return Served(f"http://127.0.0.1:{port}", service, runner)

    yield start
    for runner, service in reversed(runners):
        await service.close()
        await runner.cleanup()
