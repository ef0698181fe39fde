"""A person in headless Chromium signs in, sees a held call appear live, approves it; the held call completes."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from tests.approvals.conftest import Clock, Sink, WebKit, call_context, draft

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.parametrize("kit", ["memory", "redis"], indirect=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)"),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_person_approves_a_live_item(web_kit: WebKit, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{web_kit.url}/approvals")
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    await page.wait_for_selector("#me", timeout=15000)
    assert await page.text_content("#me") == "alice"
    await page.wait_for_selector("#none-pending")

    ctx = call_context({"amount": 250, "account": "A-7"}, notify=Sink())
    held = asyncio.create_task(ApproveStage(web_kit.store, ApprovalsConfig(keepalive_s=1))(ctx))
    card = await page.wait_for_selector(".card.pending[data-approval-id]", timeout=15000)  # arrives without reload
    approval_id = await card.get_attribute("data-approval-id")
    assert "A-7" in (await card.inner_text())
    await page.fill(f'[data-approval-id="{approval_id}"] textarea[name=comment]', "checked the invoice")
    await page.click(f'[data-approval-id="{approval_id}"] button.approve')
    await page.wait_for_selector(f"#{approval_id}", timeout=15000)  # now in history
    assert "approved" in (await page.inner_text(f"#{approval_id}"))

    await asyncio.wait_for(held, 15)
    assert ctx.approval is not None and ctx.approval.id == approval_id
    assert ctx.approval.decided_by == ("alice",) and ctx.approval.comment == "checked the invoice"


async def test_a_comment_being_written_survives_live_updates(web_kit: WebKit, browser: Any) -> None:
    clock = Clock()
    first, _ = await web_kit.store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    page = await browser.new_page()
    await page.goto(f"{web_kit.url}/approvals")
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    box = f'[data-approval-id="{first.id}"] textarea[name=comment]'
    await page.wait_for_selector(box, timeout=15000)
    await page.fill(box, "half-written reason")
    await page.click("h2")  # the approver looks elsewhere for a moment: the comment is no longer focused
    second, _ = await web_kit.store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    await page.wait_for_selector(f'[data-approval-id="{second.id}"]', timeout=15000)  # the page updated live
    assert await page.input_value(box) == "half-written reason"

    await page.focus(box)  # while typing (focused), new calls still appear and the text and focus stay
    third, _ = await web_kit.store.create_or_join(draft(clock, {"n": 3}), link_s=1800)
    await page.wait_for_selector(f'[data-approval-id="{third.id}"]', timeout=15000)
    assert await page.input_value(box) == "half-written reason"
    assert await page.evaluate("document.activeElement.closest('[data-approval-id]').dataset.approvalId") == first.id


async def test_times_read_unambiguously(web_kit: WebKit, browser: Any, clock: Clock) -> None:
    """Past expiry reads as past; history times say their zone and list the newest decision first."""
    clock.now = time.time() - 60  # the store's clock is a minute behind the page's: as between expiry and sweep
    late, _ = await web_kit.store.create_or_join(draft(clock, {"n": 1}, ttl=30), link_s=1800)
    first, _ = await web_kit.store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    second, _ = await web_kit.store.create_or_join(draft(clock, {"n": 3}), link_s=1800)
    await web_kit.store.decide(second.id, "bob", "approved", None)
    clock.advance(5)
    decided = await web_kit.store.decide(first.id, "bob", "denied", None)  # created first, decided last

    page = await browser.new_page()
    await page.goto(f"{web_kit.url}/approvals")
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    card = await page.wait_for_selector(f'[data-approval-id="{late.id}"]', timeout=15000)
    assert re.search(r"expires \d+ s ago\)", await card.inner_text())  # was "expires in 3x s"
    rows = await page.eval_on_selector_all("#items tbody tr", "rows => rows.map(r => r.id)")
    assert rows == [first.id, second.id]  # by decision, not by creation
    assert decided.decided_at is not None
    shown = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(decided.decided_at)) + " UTC"
    assert await page.inner_text(f"#{first.id} td") == shown


async def test_review_links_land_on_their_item_after_sign_in(web_kit: WebKit, browser: Any, clock: Clock) -> None:
    """The webhook's "Review" link (`…/approvals#apr_…`) opened while signed out: after sign-in the page is at
    that item, pending (its card) or already decided (its history row); the fragment used to be lost."""
    from gateway.approvals.webhooks import message

    waiting, _ = await web_kit.store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    done, _ = await web_kit.store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    await web_kit.store.decide(done.id, "bob", "denied", "no")
    for item, kind in ((waiting, "card"), (done, "history row")):
        link = message(item, f"{web_kit.url}/approvals")["blocks"][-1]["elements"][0]["url"]
        page = await browser.new_page()
        await page.goto(link)
        await page.fill("#token", web_kit.token("alice"))
        await page.click("#signin")
        await page.wait_for_selector("#me", timeout=15000)
        assert page.url.endswith(f"/approvals#{item.id}"), kind
        target = await page.evaluate(
            "(() => { const t = document.querySelector(':target'); return t && [t.id, t.tagName]; })()")
        assert target == [item.id, "DIV" if kind == "card" else "TR"], kind
        await page.close()


async def test_a_lapsed_session_keeps_the_review_link(web_kit: WebKit, browser: Any, clock: Clock) -> None:
    """The page at `/approvals#apr_…` whose session ends (signed out in another tab) asks to sign in again and,
    after that, is back at the item: the live update's 401 used to send it to plain `/approvals`."""
    item, _ = await web_kit.store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    context = await browser.new_context()
    page, other = await context.new_page(), await context.new_page()
    await page.goto(f"{web_kit.url}/approvals#{item.id}")
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    await page.wait_for_selector("#me", timeout=15000)
    await other.goto(f"{web_kit.url}/approvals")
    await other.click("header button[type=submit]")  # Sign out: the first page's stream ends, its refresh gets 401
    await page.wait_for_selector("#token", timeout=15000)
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    await page.wait_for_selector("#me", timeout=15000)
    assert page.url.endswith(f"/approvals#{item.id}")
    await context.close()
