"""The approvers' live-update stream lives no longer than the credential it was opened with (real server)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.approvals.conftest import Clock, WebKit, draft


async def _read_to_end(resp: aiohttp.ClientResponse, within_s: float) -> bytes:
    """Everything the stream sends until the server ends it (keep-alives included)."""
    return await asyncio.wait_for(resp.content.read(), within_s)


async def test_stream_ends_when_its_token_expires(web_kit: WebKit) -> None:
    token = web_kit.issuer.mint("alice", aud=web_kit.audience, groups=["approvers"], exp=time.time() + 3)
    async with web_kit.http.get(f"{web_kit.url}/api/approvals/events",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.readline(), 5) == b": connected\n"
        sent = await _read_to_end(resp, 15)  # before the fix: keep-alives and ids forever
    assert b": keep-alive" in sent  # it did stay open while the token was good


async def test_stream_ends_when_its_session_signs_out(web_kit: WebKit) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.get(f"{web_kit.url}/approvals") as resp:
            assert resp.status == 200
        csrf = jar.filter_cookies(web_kit.url)["customs_csrf"].value
        async with browser.post(f"{web_kit.url}/approvals/signin", data={"token": web_kit.token("alice"), "csrf": csrf},
                                allow_redirects=False) as resp:
            assert resp.status == 303
        csrf = jar.filter_cookies(web_kit.url)["customs_csrf"].value
        other_tab = await browser.get(f"{web_kit.url}/api/approvals/events")
        try:
            assert other_tab.status == 200
            assert await asyncio.wait_for(other_tab.content.readline(), 5) == b": connected\n"
            item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
            seen = b""
            while item.id.encode() not in seen:  # the session's stream is live
                seen += await asyncio.wait_for(other_tab.content.readline(), 10)
            async with browser.post(f"{web_kit.url}/approvals/signout", data={"csrf": csrf}) as resp:
                assert resp.status == 200 and "Sign in" in await resp.text()
            await _read_to_end(other_tab, 10)  # ended by the sign-out, not left sending ids
        finally:
            other_tab.close()


async def test_stream_names_only_calls_its_approver_may_see(web_kit: WebKit) -> None:
    """Ids only, but ids of calls policy hides from this person told them such a call exists and when it moved."""
    async with web_kit.http.get(f"{web_kit.url}/api/approvals/events", headers=web_kit.bearer("alice")) as seer, \
            web_kit.http.get(f"{web_kit.url}/api/approvals/events",
                             headers=web_kit.bearer("mallory", groups=("visitors",))) as hidden:
        for stream in (seer, hidden):
            assert await asyncio.wait_for(stream.content.readline(), 5) == b": connected\n"
        item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
        seen = b""
        while item.id.encode() not in seen:
            seen += await asyncio.wait_for(seer.content.readline(), 10)
        # The change reached every stream's queue at once; two keep-alives later it would have been written.
        told, keepalives = b"", 0
        while keepalives < 2:
            line = await asyncio.wait_for(hidden.content.readline(), 10)
            keepalives += line == b": keep-alive\n"
            told += line
        assert item.id.encode() not in told and b"event: change" not in told
