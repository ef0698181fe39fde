"""WebhookNotifier.close() at shutdown: it waits for deliveries only until the drain deadline's bound
(`shutdown_bound`, at least CLOSE_MIN_S, at most `close_grace_s`) and logs, by approval id, the notifications it did
not deliver. Real aiohttp receivers on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.model import Approval
from gateway.approvals.stage import ApproveStage
from gateway.approvals.webhooks import WebhookNotifier
from gateway.config.model import ApprovalsConfig, WebhookConfig
from tests.approvals.conftest import call_context
from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio
LOGGER = "customs.approvals.webhooks"


class Hook:
    """A receiver that answers 200, or (mute) takes every delivery and never answers it until released."""

    def __init__(self, *, mute: bool) -> None:
        self.mute = mute
        self.hits = 0
        self.got = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        self.got.set()
        if self.mute:
            await self.release.wait()
        return web.Response(status=200)


async def _serve(hook: Hook) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    async with run_aiohttp(app, shutdown_timeout=0.1) as base:
        try:
            yield f"{base}/hook"
        finally:
            hook.release.set()


@pytest.fixture
async def mute() -> AsyncIterator[tuple[Hook, str]]:
    hook = Hook(mute=True)
    async for url in _serve(hook):
        yield hook, url


@pytest.fixture
async def answering() -> AsyncIterator[tuple[Hook, str]]:
    hook = Hook(mute=False)
    async for url in _serve(hook):
        yield hook, url


async def _items(n: int) -> list[Approval]:
    store = MemoryApprovalStore()
    stage = ApproveStage(store, ApprovalsConfig())
    items = []
    for i in range(n):
        item, _ = await store.create_or_join(stage.draft(call_context({"amount": i, "account": "A-1"})), link_s=60)
        items.append(item)
    return items


async def test_close_gives_up_at_the_shutdown_bound_and_logs_what_was_not_delivered(
        mute: tuple[Hook, str], caplog: pytest.LogCaptureFixture) -> None:
    """One delivery under way to a receiver that never answers, one queued behind it: close() waited up to 5 s for
    them whatever the drain deadline, and dropped them without a word."""
    hook, url = mute
    notifier = WebhookNotifier([WebhookConfig(url=url)], workers=1, timeout_s=60)
    await notifier.start()
    first, second = await _items(2)
    notifier.notify(first)
    notifier.notify(second)
    await asyncio.wait_for(hook.got.wait(), 10)
    notifier.shutdown_bound = asyncio.get_running_loop().time() + 0.3
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, LOGGER):
        await notifier.close()
    took = time.monotonic() - began
    assert took < 1.0, f"close took {took:.1f} s, its bound was 0.3 s away"  # not the 5 s close_grace_s
    assert hook.hits == 1 and notifier.delivered == 0 and notifier.unsent == 2
    port = url.split(":")[2].split("/")[0]
    assert (f"approvals.webhooks[0] (http://127.0.0.1:{port}/…): 2 notification(s) not delivered at shutdown: "
            f"{first.id}, {second.id}") in caplog.text, caplog.text


async def test_a_delivery_still_gets_a_moment_when_the_bound_has_passed(answering: tuple[Hook, str]) -> None:
    """Shutdown's earlier steps may use the deadline up (a hung Redis until its cut-off): a receiver that answers
    still gets what is queued (CLOSE_MIN_S)."""
    hook, url = answering
    notifier = WebhookNotifier([WebhookConfig(url=url)])
    await notifier.start()
    [item] = await _items(1)
    notifier.notify(item)
    notifier.shutdown_bound = asyncio.get_running_loop().time() - 1.0
    await notifier.close()
    assert hook.hits == 1 and notifier.delivered == 1 and notifier.unsent == 0


async def test_a_long_list_of_undelivered_notifications_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    notifier = WebhookNotifier([WebhookConfig(url="http://127.0.0.1:9/x")], workers=0)  # nothing ever delivers
    items = await _items(12)
    for item in items:
        notifier.notify(item)
    with caplog.at_level(logging.WARNING, LOGGER):
        await notifier.close()
    shown = ", ".join(item.id for item in items[:10])
    assert f"12 notification(s) not delivered at shutdown: {shown} and 2 more" in caplog.text, caplog.text
    assert notifier.unsent == 12
