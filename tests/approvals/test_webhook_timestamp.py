"""A webhook delivery's second signature covers its timestamp: a real receiver, verifying as docs/approvals.md says,
refuses a replayed (stale) delivery and accepts each retry, which is signed afresh; the body-only signature stays."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.approvals.webhooks import WebhookNotifier
from gateway.config.model import WebhookConfig
from tests.approvals.conftest import Clock, draft
from tests.support.servers import run_aiohttp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"
SECRET = "s3cret"


def documented_verify() -> Callable[..., bool]:
    """The receiver's check exactly as docs/approvals.md gives it (its Python snippet, run as written)."""
    [snippet] = re.findall(r"```python\n(.*?def verify_customs_webhook.*?)```", DOCS.read_text(), re.S)
    scope: dict[str, Any] = {}
    exec(compile(snippet, str(DOCS), "exec"), scope)
    verify: Callable[..., bool] = scope["verify_customs_webhook"]
    return verify


@dataclass
class Receiver:
    """A receiver that checks every delivery: the body signature as it always could, and the timestamped one."""

    answers: list[int]  # to give, in order; 200 once exhausted
    skew_s: float = 0.0  # the receiver's clock ahead of the gateway's, as a replay later in time sees it
    hits: list[tuple[dict[str, str], bytes, bool]] = field(default_factory=list)
    verify: Callable[..., bool] = field(default_factory=documented_verify)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        ok = self.verify(SECRET.encode(), request.headers, body, now=time.time() + self.skew_s)
        self.hits.append((headers, body, ok))
        if not ok:
            return web.Response(status=401)  # refused: stale, or the timestamp is not the one signed
        # The body-only signature, unchanged (receivers that check only it keep working).
        body_only = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Customs-Signature"], body_only)
        return web.Response(status=self.answers.pop(0) if self.answers else 200,
                            headers={"Retry-After": "1"})  # the retry comes a second later at least


async def _deliver(receiver: Receiver) -> WebhookNotifier:
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    async with run_aiohttp(app) as url:
        notifier = WebhookNotifier([WebhookConfig(url=url + "/hook", secret=SECRET)], base_delay_s=0.01)
        await notifier.start()
        try:
            notifier.notify(draft(Clock()))
            await asyncio.wait_for(notifier.drain(), 15)
        finally:
            await notifier.close()
    return notifier


async def test_each_attempt_is_signed_with_its_own_timestamp() -> None:
    receiver = Receiver(answers=[503])  # the first attempt fails: the retry must verify on its own
    notifier = await _deliver(receiver)
    assert notifier.delivered == 1 and [ok for *_, ok in receiver.hits] == [True, True]
    (first, body, _), (retry, again, _) = receiver.hits
    assert body == again  # one delivery: the same body, so `approval.id` still tells a retry from a new call
    assert int(retry["X-Customs-Timestamp"]) > int(first["X-Customs-Timestamp"])  # fresh, not the first's
    assert retry["X-Customs-Signature-Timestamped"] != first["X-Customs-Signature-Timestamped"]
    assert retry["X-Customs-Signature"] == first["X-Customs-Signature"]  # the body's, as before


async def test_a_replayed_delivery_is_refused_stale_or_restamped() -> None:
    receiver = Receiver(answers=[])
    await _deliver(receiver)
    [(headers, body, ok)] = receiver.hits
    assert ok
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    replay = {k: v for k, v in headers.items() if k.startswith("X-Customs") or k == "Content-Type"}
    async with run_aiohttp(app) as url, aiohttp.ClientSession() as http:
        receiver.skew_s = 600  # the captured request, sent again ten minutes later
        async with http.post(url + "/hook", data=body, headers=replay) as resp:
            assert resp.status == 401
        # ... with a current timestamp put in: the timestamped signature no longer matches
        restamped = {**replay, "X-Customs-Timestamp": str(int(time.time()) + 600)}
        async with http.post(url + "/hook", data=body, headers=restamped) as resp:
            assert resp.status == 401
        receiver.skew_s = 0  # the genuine delivery, still fresh, verifies
        async with http.post(url + "/hook", data=body, headers=replay) as resp:
            assert resp.status == 200


async def test_an_unsigned_webhook_carries_neither_signature() -> None:
    hits: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(dict(request.headers))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with run_aiohttp(app) as url:
        notifier = WebhookNotifier([WebhookConfig(url=url + "/hook")])
        await notifier.start()
        try:
            notifier.notify(draft(Clock()))
            await asyncio.wait_for(notifier.drain(), 10)
        finally:
            await notifier.close()
    [headers] = hits
    assert "X-Customs-Signature" not in headers and "X-Customs-Signature-Timestamped" not in headers
    assert headers["X-Customs-Timestamp"].isdigit()
