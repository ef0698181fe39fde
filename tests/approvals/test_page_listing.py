"""What the approvers' page lists and how it answers a decision, over a real aiohttp server (both stores)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from gateway.approvals.web import approval_routes
from gateway.config.model import IdentityConfig, IssuerConfig
from gateway.context import Decision
from gateway.identity.identifier import JwtIdentifier
from tests.approvals.conftest import Clock, StoreKit, WebKit, draft
from tests.support.servers import run_aiohttp
from tests.support.tokens import TestIssuer


@asynccontextmanager
async def docs_approver(store: Any, tmp_path: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession, dict[str, str]]]:
    """The approvals API and page over `store` on a real server, and a session for `dora`, whom policy lets see
    and decide the "docs" tool's calls only: (base URL, HTTP session, her headers)."""
    issuer = TestIssuer(tmp_path)
    audience = "http://approvals.test/mcp"
    identifier = JwtIdentifier(IdentityConfig(mode="jwt", issuers=(IssuerConfig(**issuer.config(audience=audience)),)),
                               {}, "http://approvals.test", None)
    await identifier.start()

    def only_docs(approver: Any, approval: Any) -> Decision:
        return Decision("allow" if approval.tool == "docs" else "deny", ("docs-team",))

    app = web.Application()
    app.add_routes(approval_routes(store, identifier, only_docs))
    try:
        async with run_aiohttp(app) as url, aiohttp.ClientSession() as http:
            yield url.rstrip("/"), http, {"Authorization": f"Bearer {issuer.mint('dora', aud=audience)}"}
    finally:
        await identifier.close()


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
    assert len(re.findall(r'<tr id="apr_', html)) == 50  # the history stays bounded


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


async def test_the_api_lists_the_calls_a_person_may_decide_behind_newer_ones_they_may_not(
        kit: StoreKit, tmp_path: Any) -> None:
    """`GET /api/approvals?limit=N` gives up to N items the caller may see: it used to take the N newest items of
    the store and then drop those hidden from the caller, so an approver allowed only some upstreams saw an
    empty list while calls for them waited behind N newer ones for other people."""
    store = await kit.make()
    clock = Clock()
    done, _ = await store.create_or_join(draft(clock, {"done": True}, tool="docs"), link_s=1800)
    await store.cancel(done.id)
    clock.advance(0.001)
    mine, _ = await store.create_or_join(draft(clock, tool="docs"), link_s=1800)
    for n in range(5):
        clock.advance(0.001)
        await store.create_or_join(draft(clock, {"n": n}), link_s=1800)
    for n in range(210):  # decided calls of others, newer than this person's
        clock.advance(0.001)
        other, _ = await store.create_or_join(draft(clock, {"decided": n}), link_s=1800)
        await store.cancel(other.id)
    async with docs_approver(store, tmp_path) as (url, http, headers):
        for query in ("?state=pending&limit=3", "?limit=1"):
            async with http.get(f"{url}/api/approvals{query}", headers=headers) as resp:
                assert resp.status == 200
                assert [i["id"] for i in (await resp.json())["items"]] == [mine.id]
        async with http.get(f"{url}/approvals/fragment", headers=headers) as resp:
            page = await resp.text()
        assert f'data-approval-id="{mine.id}"' in page and f'<tr id="{done.id}"' in page  # the page's history too
