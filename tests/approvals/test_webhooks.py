"""Webhooks to a real aiohttp receiver: Slack-shaped body, verifiable HMAC, retry after a 500, no blocking."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.approvals.webhooks import WebhookNotifier
from gateway.config.model import ApprovalsConfig, WebhookConfig
from gateway.errors import GatewayError
from tests.approvals.conftest import call_context, eventually
from tests.support.servers import run_aiohttp


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answers to give, in order; 200 once exhausted
    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver("", [500])

    async def hook(request: web.Request) -> web.Response:
        box.hits.append((dict(request.headers), await request.read()))
        status = box.statuses.pop(0) if box.statuses else 200
        if status == 200:
            box.got.set()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    yield box
    await runner.cleanup()


async def test_new_pending_call_is_signed_and_retried(receiver: Receiver) -> None:
    notifier = WebhookNotifier([WebhookConfig(url=receiver.url, secret="s3cret")], page_url="http://gw/approvals",
                               base_delay_s=0.01)
    await notifier.start()
    try:
        store = MemoryApprovalStore()
        stage = ApproveStage(store, ApprovalsConfig(), notifier=notifier)
        with pytest.raises(GatewayError):
            await stage(call_context())
        with pytest.raises(GatewayError):
            await stage(call_context())  # a retry joins: no second notification
        await asyncio.wait_for(receiver.got.wait(), 10)
        await asyncio.wait_for(notifier.drain(), 10)
    finally:
        await notifier.close()
    assert len(receiver.hits) == 2 and notifier.delivered == 1  # first answered 500, second 200
    headers, body = receiver.hits[-1]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Customs-Signature"], expected)
    assert int(headers["X-Customs-Timestamp"]) > 0
    payload = json.loads(body)
    [item] = await store.list()
    assert payload["approval"]["id"] == item.id and "payments/pay" in payload["text"]
    assert payload["blocks"][0]["type"] == "section"
    assert payload["blocks"][-1]["elements"][0]["url"] == f"http://gw/approvals#{item.id}"


async def test_client_error_is_not_retried_and_unreachable_gives_up(receiver: Receiver) -> None:
    receiver.statuses[:] = [404]
    dead = WebhookConfig(url="http://127.0.0.1:9/never")
    notifier = WebhookNotifier([WebhookConfig(url=receiver.url), dead], attempts=2, base_delay_s=0.01)
    await notifier.start()
    try:
        store = MemoryApprovalStore()
        item, _ = await store.create_or_join(ApproveStage(store, ApprovalsConfig()).draft(call_context()), link_s=60)
        notifier.notify(item)
        await asyncio.wait_for(notifier.drain(), 10)
    finally:
        await notifier.close()
    assert len(receiver.hits) == 1 and "X-Customs-Signature" not in receiver.hits[0][0]
    assert notifier.failed == 2 and notifier.delivered == 0


async def test_full_queue_drops_instead_of_blocking() -> None:
    notifier = WebhookNotifier([WebhookConfig(url="http://127.0.0.1:9/x")], max_queue=1, workers=0)
    store = MemoryApprovalStore()
    item, _ = await store.create_or_join(ApproveStage(store, ApprovalsConfig()).draft(call_context()), link_s=60)
    notifier.notify(item)
    notifier.notify(item)
    assert notifier.dropped == 1
    await notifier.close()




async def test_hostile_names_and_arguments_cannot_link_or_mention_in_slack(receiver: Receiver) -> None:
    notifier = WebhookNotifier([WebhookConfig(url=receiver.url)], page_url="http://gw/approvals")
    await notifier.start()
    receiver.statuses[:] = []
    try:
        store = MemoryApprovalStore()
        draft = ApproveStage(store, ApprovalsConfig()).draft(call_context(
            {"memo": "```\n<https://evil.example/approve|Approve here> <!channel> & more"}))
        draft = replace(draft, tool="<https://evil.example|pay>", tenant="<!here>")
        item, _ = await store.create_or_join(draft, link_s=60)
        notifier.notify(item)
        await asyncio.wait_for(notifier.drain(), 10)
    finally:
        await notifier.close()
    payload = json.loads(receiver.hits[-1][1])
    texts = [payload["text"], *(b["text"]["text"] for b in payload["blocks"] if "text" in b),
             *(f["text"] for b in payload["blocks"] for f in b.get("fields", []))]
    for text in texts:  # Slack turns <…> into links and mentions; only the gateway's own date token may stay
        assert "<https://evil" not in text and "<!channel>" not in text and "<!here>" not in text, text
    assert "&lt;https://evil.example|pay&gt;" in payload["text"] and "&amp; more" in texts[2]
    code = payload["blocks"][2]["text"]["text"]
    assert code.startswith("```") and code.endswith("```") and code.count("```") == 2  # no early close
    assert payload["approval"]["tool"] == "<https://evil.example|pay>"  # programs get the raw Approval


async def test_a_redirect_is_not_followed() -> None:
    """A webhook URL that redirects (http to https, a moved hook) is reported, not followed: following it turned
    the POST into a bodiless GET (301/302/303), which could answer 200 and count as delivered, and carried the
    signature to wherever the redirect pointed."""
    elsewhere: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/elsewhere"})

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.method)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", moved)
    app.router.add_route("*", "/elsewhere", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    notifier = WebhookNotifier([WebhookConfig(url=url, secret="s3cret")], base_delay_s=0.01)
    await notifier.start()
    try:
        with pytest.raises(GatewayError):
            await ApproveStage(MemoryApprovalStore(), ApprovalsConfig(), notifier=notifier)(call_context())
        await asyncio.wait_for(notifier.drain(), 10)
    finally:
        await notifier.close()
        await runner.cleanup()
    assert elsewhere == [] and notifier.delivered == 0 and notifier.failed == 1


async def test_a_hanging_webhook_does_not_hold_up_the_others(receiver: Receiver) -> None:
    """Every webhook's deliveries shared one queue and two workers: a webhook that never answers took both within
    two notifications (each attempt waits out its timeout, then retries), so the healthy one (the approvers' Slack)
    heard of further calls only minutes later, or never once the queue was full."""
    receiver.statuses[:] = []
    answered = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await answered.wait()  # answers only when the test ends
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hang", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hanging = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hang"  # type: ignore[union-attr]
    notifier = WebhookNotifier([WebhookConfig(url=hanging), WebhookConfig(url=receiver.url)], timeout_s=60)
    await notifier.start()
    try:
        store = MemoryApprovalStore()
        stage = ApproveStage(store, ApprovalsConfig(), notifier=notifier)
        for n in range(4):
            with pytest.raises(GatewayError):
                await stage(call_context({"amount": n, "account": "A-1"}))

        async def all_heard() -> bool:
            return len(receiver.hits) == 4
        await eventually(all_heard)
    finally:
        answered.set()
        await notifier.close()
        await runner.cleanup()


async def test_deliveries_under_way_at_shutdown_are_given_time_to_finish(receiver: Receiver) -> None:
    """A call held just before a restart stays pending for the agent's retry, which joins it and notifies nobody:
    a delivery still queued or being retried when the gateway closed was dropped, so approvers never heard of it."""
    notifier = WebhookNotifier([WebhookConfig(url=receiver.url)], base_delay_s=0.2)  # the first answer is a 500
    await notifier.start()
    store = MemoryApprovalStore()
    with pytest.raises(GatewayError):
        await ApproveStage(store, ApprovalsConfig(), notifier=notifier)(call_context())
    await notifier.close()
    assert receiver.got.is_set() and notifier.delivered == 1 and len(receiver.hits) == 2


async def test_a_rate_limited_delivery_waits_as_long_as_retry_after_asks() -> None:
    """Slack answers a burst 429 with Retry-After: the retries (0.5, 1, 2, 4 s) all fell inside the window it
    asked for, so the notification was lost after five refusals."""
    hits: list[float] = []

    async def limited(_: web.Request) -> web.Response:
        hits.append(asyncio.get_running_loop().time())
        if len(hits) == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", limited)
    async with run_aiohttp(app) as url:
        notifier = WebhookNotifier([WebhookConfig(url=url + "/hook")], attempts=2, base_delay_s=0.01)
        await notifier.start()
        try:
            store = MemoryApprovalStore()
            with pytest.raises(GatewayError):
                await ApproveStage(store, ApprovalsConfig(), notifier=notifier)(call_context())
            await asyncio.wait_for(notifier.drain(), 10)
        finally:
            await notifier.close()
    assert notifier.delivered == 1 and len(hits) == 2 and hits[1] - hits[0] >= 1.9


async def test_the_log_names_a_webhook_without_the_secret_its_url_holds(caplog: pytest.LogCaptureFixture) -> None:
    """A webhook URL is often its own credential (Discord's /api/webhooks/<id>/<token>, Teams', Google Chat's
    ?key=…&token=…; Slack's was the only kind the log redaction knew): every delivery problem logged it whole, and a
    redirect's Location with it. The log names the webhook by its place in the config and its origin."""
    secret = "tok3nInThePath9x"

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403)

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": f"https://hooks.example/api/webhooks/1/{secret}-moved"})

    app = web.Application()
    app.router.add_post(f"/api/webhooks/1/{secret}", refuse)
    app.router.add_post(f"/moved/{secret}", moved)
    async with run_aiohttp(app) as base:
        hooks = [WebhookConfig(url=f"{base}/api/webhooks/1/{secret}"), WebhookConfig(url=f"{base}/moved/{secret}"),
                 WebhookConfig(url=f"http://127.0.0.1:9/never?token={secret}")]
        notifier = WebhookNotifier(hooks, attempts=2, base_delay_s=0.01)
        await notifier.start()
        try:
            store = MemoryApprovalStore()
            draft = ApproveStage(store, ApprovalsConfig()).draft(call_context())
            item, _ = await store.create_or_join(draft, link_s=60)
            with caplog.at_level(logging.INFO, logger="customs.approvals.webhooks"):
                notifier.notify(item)
                await asyncio.wait_for(notifier.drain(), 10)
        finally:
            await notifier.close()
    assert notifier.failed == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "customs.approvals.webhooks"]
    assert logged and not [m for m in logged if secret in m], logged
    for i, where in enumerate((base, base, "http://127.0.0.1:9")):
        assert any(f"approvals.webhooks[{i}] ({where}/…)" in m for m in logged), (i, logged)
    assert any("https://hooks.example/…" in m for m in logged), logged  # where the redirect points, to act on
