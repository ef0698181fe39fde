"""What the approvers' page lists and how it answers a decision, over a real aiohttp server (both stores)."""

from __future__ import annotations

import re

from tests.approvals.conftest import Clock, WebKit, draft


async def _fragment(kit: WebKit, sub: str = "alice") -> str:
    async with kit.http.get(f"{kit.url}/approvals/fragment", headers=kit.bearer(sub)) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_an_old_pending_call_is_listed_behind_many_newer_decided_ones(web_kit: WebKit) -> None:
    clock = Clock()
    waiting, _ = await web_kit.store.create_or_join(draft(clock, {"old": True}), link_s=1800)
    for n in range(210):  # a busy gateway: many newer calls already decided
        clock.advance(0.001)
        item, _ = await web_kit.store.create_or_join(draft(clock, {"n": n}), link_s=1800)
        await web_kit.store.cancel(item.id)
    html = await _fragment(web_kit)
    assert f'data-approval-id="{waiting.id}"' in html
    assert "Waiting for a decision (1)" in html
    assert len(re.findall(r'<tr id="h-', html)) == 50  # the history stays bounded


async def test_quorum_page_tells_an_approver_who_voted_and_hides_the_buttons(web_kit: WebKit) -> None:
    import aiohttp

    item, _ = await web_kit.store.create_or_join(draft(Clock(), quorum=2), link_s=1800)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:  # a person signed in, posting the page's form
        async with browser.get(f"{web_kit.url}/approvals") as resp:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert csrf is not None
        async with browser.post(f"{web_kit.url}/approvals/signin",
                                data={"csrf": csrf[1], "token": web_kit.token("alice")}) as resp:
            assert resp.status == 200
        csrf_cookie = browser.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        decide = {"csrf": csrf_cookie, "outcome": "approve", "comment": "first"}
        async with browser.post(f"{web_kit.url}/approvals/{item.id}/decide", data=decide) as resp:
            page = await resp.text()
        assert (await web_kit.store.get(item.id)).pending  # 1 of 2
        card = page.split(f'data-approval-id="{item.id}"', 1)[1].split("</div>", 1)[0]
        assert "1 of 2 (alice)" in card and "waits for 1 more approver" in card
        assert 'value="approve"' not in card  # no button that could only be refused
        async with browser.post(f"{web_kit.url}/approvals/{item.id}/decide", data=decide) as resp:
            assert resp.status == 409
            again = await resp.text()
        assert "You already approved this call; it needs 2 approvals." in again and "Already pending" not in again
