"""The page's live updates come back after a refused reconnect: an EventSource whose reconnect is answered with an
error status (503 while the store that holds sign-outs is down, a proxy's 502 during a restart) is closed for good by
the browser, and the page used to fall back to its 30 s refresh until reloaded. It now opens a new one (backing off)
and refetches once it is back, so calls held after the outage appear at once again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.approvals.redis import RedisApprovalStore
from gateway.approvals.signouts import RedisSignOuts
from gateway.approvals.web import approval_routes
from gateway.config.model import IdentityConfig, IssuerConfig
from gateway.identity.identifier import JwtIdentifier
from tests.approvals.conftest import Clock, draft, groups_check
from tests.approvals.test_browser_page import CHROMIUM, browser  # noqa: F401  (the fixture)
from tests.support.redis import RedisServer
from tests.support.servers import run_aiohttp
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")
AUDIENCE = "http://approvals.test/mcp"


@dataclass
class Page:
    url: str
    store: RedisApprovalStore
    token: str
    closing: asyncio.Event
    redis: RedisServer


@pytest.fixture
async def page_on_redis(redis_factory: Any, tmp_path: Any) -> AsyncIterator[Page]:
    server = redis_factory(appendonly=True)
    issuer = TestIssuer(tmp_path)
    identifier = JwtIdentifier(IdentityConfig(mode="jwt", issuers=(IssuerConfig(**issuer.config(audience=AUDIENCE)),)),
                               {}, "http://approvals.test", None)
    await identifier.start()
    store = RedisApprovalStore.from_url(server.url, "t:")
    await store.start()
    client = aioredis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    closing = asyncio.Event()
    app = web.Application()
    app.add_routes(approval_routes(store, identifier, groups_check([]), keepalive_s=0.5, closing=closing,
                                   signouts=RedisSignOuts(client, "t:")))
    try:
        async with run_aiohttp(app, shutdown_timeout=1) as url:
            yield Page(url.rstrip("/"), store, issuer.mint("alice", aud=AUDIENCE, groups=["approvers"]), closing,
                       server)
    finally:
        await client.aclose()
        await store.close()
        await identifier.close()


async def test_live_updates_resume_after_a_reconnect_refused_during_an_outage(page_on_redis: Page,
                                                                              browser: Any) -> None:  # noqa: F811
    kit = page_on_redis
    page = await browser.new_page()
    await page.goto(f"{kit.url}/approvals")
    await page.fill("#token", kit.token)
    await page.click("#signin")
    await page.wait_for_selector("#none-pending", timeout=15000)
    kit.redis.kill()
    kit.closing.set()  # the stream ends (as at a replica's shutdown): the browser reconnects...
    await page.wait_for_function(_streams_opened(2), timeout=15000)
    kit.closing.clear()
    await page.wait_for_function(_streams_opened(3), timeout=15000)  # ...into the outage: refused 503
    kit.redis.restart()
    item, _ = await kit.store.create_or_join(draft(Clock(), {"n": 1}), link_s=1800)
    # Far below the page's own 30 s refresh: the live stream is back and the page refetched.
    await page.wait_for_selector(f'[data-approval-id="{item.id}"]', timeout=15000)


def _streams_opened(n: int) -> str:
    return f"() => performance.getEntriesByType('resource').filter(e => e.name.endsWith('/events')).length >= {n}"
