"""The approvers' page and API as a browser meets them: framing, content sniffing, caching, script sources."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.approvals.conftest import Clock, WebKit, draft
from tests.approvals.test_browser_page import CHROMIUM, browser

__all__ = ["browser"]  # the fixture
REPO = Path(__file__).resolve().parents[2]

# headers only: one store kind is enough
MEMORY = pytest.mark.parametrize("kit", ["memory"], indirect=True)


async def _signed_in(kit: WebKit) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.get(f"{kit.url}/approvals") as resp:
        assert resp.status == 200
    csrf = session.cookie_jar.filter_cookies(kit.url)["customs_csrf"].value
    async with session.post(f"{kit.url}/approvals/signin", data={"token": kit.token("alice"), "csrf": csrf},
                            allow_redirects=False) as resp:
        assert resp.status == 303
    return session


def _csp(headers: Any) -> dict[str, list[str]]:
    policy = headers.get("Content-Security-Policy", "")
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _assert_page_headers(headers: Any, html: str) -> None:
    assert headers.get("X-Frame-Options") == "DENY"  # the Approve button cannot be clickjacked in a frame
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert "no-store" in headers.get("Cache-Control", "")  # arguments of held calls stay out of caches
    # not no-referrer: under it Chromium posts the forms with `Origin: null`, which the gateway refuses (403)
    assert headers.get("Referrer-Policy") == "same-origin"
    csp = _csp(headers)
    assert csp.get("frame-ancestors") == ["'none'"] and csp.get("default-src") == ["'none'"]
    assert csp.get("form-action") == ["'self'"] and csp.get("base-uri") == ["'none'"]
    assert "'unsafe-inline'" not in csp.get("script-src", []) and "'unsafe-inline'" not in csp.get("style-src", [])
    # Every inline script and style the page carries is allowed by its hash, so the page still works; an
    # injected one (a hash nobody listed) would not run.
    for script in re.findall(r"<script>(.*?)</script>", html, re.S):
        assert _sha256(script) in csp["script-src"]
    for style in re.findall(r"<style>(.*?)</style>", html, re.S):
        assert _sha256(style) in csp["style-src"]


@MEMORY
async def test_page_is_not_frameable_sniffable_or_cached(web_kit: WebKit) -> None:
    await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    async with web_kit.http.get(f"{web_kit.url}/approvals") as resp:  # the sign-in form
        assert resp.status == 200
        _assert_page_headers(resp.headers, await resp.text())
    session = await _signed_in(web_kit)
    try:
        async with session.get(f"{web_kit.url}/approvals") as resp:  # the signed-in page with its live script
            html = await resp.text()
            assert resp.status == 200 and "data-approval-id" in html and "EventSource" in html
            _assert_page_headers(resp.headers, html)
        async with session.get(f"{web_kit.url}/approvals/fragment") as resp:
            assert resp.headers.get("X-Content-Type-Options") == "nosniff"
            assert "no-store" in resp.headers.get("Cache-Control", "")
    finally:
        await session.close()


@MEMORY
async def test_api_answers_are_not_sniffed_or_cached(web_kit: WebKit) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    for path in ("/api/approvals", f"/api/approvals/{item.id}", "/api/approvals/apr_missing"):
        async with web_kit.http.get(f"{web_kit.url}{path}", headers=web_kit.bearer("alice")) as resp:
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
            assert "no-store" in resp.headers.get("Cache-Control", ""), path


@MEMORY
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)")
async def test_a_same_site_page_cannot_frame_the_signed_in_page(web_kit: WebKit, browser: Any) -> None:
    # Another port of the same host is the same site: SameSite=Strict sends the session cookie into its frame.
    from aiohttp import web

    from tests.support.servers import run_aiohttp

    async def decoy(_: web.Request) -> web.Response:
        return web.Response(content_type="text/html",
                            text=f'<iframe id="f" src="{web_kit.url}/approvals" width="800" height="600"></iframe>')

    app = web.Application()
    app.router.add_get("/", decoy)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        await page.goto(f"{web_kit.url}/approvals")
        await page.fill("#token", web_kit.token("alice"))
        await page.click("#signin")
        await page.wait_for_selector("#me", timeout=15000)
        assert not [p for p in problems if "Content Security Policy" in p]  # the page's own scripts run
        async with run_aiohttp(app) as decoy_url:
            framing = await context.new_page()
            await framing.goto(decoy_url, wait_until="load")  # the frame's load (or refusal) included
            [frame] = [f for f in framing.frames if f.parent_frame is not None]
            assert await frame.query_selector("#me") is None  # refused: no signed-in page under a decoy
    finally:
        await context.close()


def _set_cookies(resp: Any) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in resp.headers.getall("Set-Cookie", [])}


async def sign_in_behind(start_gateway: Any, tmp_path: Path, public: str, http: Any) -> SignedIn:
    """A gateway published at `public` (a proxy in front); alice signs in on its page with a plain HTTP client."""
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path)
    gw = await start_gateway({"listen": {"public_url": public},
                              "upstreams": [{"name": "x", "url": "http://127.0.0.1:9/mcp"}],
                              "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                              "policies": {"dir": str(REPO / "policies")}})
    async with http.get(f"{gw.url}/approvals") as resp:
        page_csrf = _set_cookies(resp)["customs_csrf"]
    csrf = page_csrf.split("=", 1)[1].split(";", 1)[0]
    token = issuer.mint("alice", aud=f"{public}/mcp", groups=["approvers"])
    async with http.post(f"{gw.url}/approvals/signin", data={"token": token, "csrf": csrf},
                         headers={"Cookie": f"customs_csrf={csrf}"}, allow_redirects=False) as resp:
        assert resp.status == 303
        return SignedIn(gw.url, token, csrf, page_csrf, _set_cookies(resp))


@dataclass
class SignedIn:
    url: str
    token: str
    csrf: str
    page_csrf: str  # the Set-Cookie of the page's CSRF cookie
    cookies: dict[str, str]  # the Set-Cookie headers of the sign-in, by cookie name


async def test_cookies_are_secure_when_public_url_is_https(start_gateway: Any, tmp_path: Path) -> None:
    # TLS ends at a proxy in front of the gateway: the request reaching it is plain HTTP, yet the browser is on
    # https://, and a cookie without Secure would also be sent over any plain-HTTP request to that host.
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        signed = await sign_in_behind(start_gateway, tmp_path, "https://customs.example", http)
    assert "Secure" in signed.page_csrf
    assert "Secure" in signed.cookies["customs_approver"] and "HttpOnly" in signed.cookies["customs_approver"]
    assert "Secure" in signed.cookies["customs_csrf"]


@MEMORY
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)")
async def test_a_same_site_page_tossing_the_csrf_cookie_cannot_decide(web_kit: WebKit, browser: Any) -> None:
    # The double-submit token is a cookie any page of the same host (another port) can overwrite, and the
    # SameSite=Strict session cookie goes along with a same-site form. web_kit has no gateway origin guard:
    # this is the page under `listen.allowed_origins: ["*"]` (or with a sibling origin listed for agents).
    from aiohttp import web

    from tests.support.servers import run_aiohttp

    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)

    async def attacker(_: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form id="x" method="post" action="{web_kit.url}/approvals/{item.id}/decide">'
            '<input name="csrf" value="tossed"><input name="outcome" value="approve"></form>'
            '<script>document.cookie = "customs_csrf=tossed; path=/";'
            'document.getElementById("x").submit();</script>'))

    app = web.Application()
    app.router.add_get("/", attacker)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{web_kit.url}/approvals")
        await page.fill("#token", web_kit.token("alice"))
        await page.click("#signin")
        await page.wait_for_selector(f'[data-approval-id="{item.id}"]', timeout=15000)
        async with run_aiohttp(app) as attacker_url:
            evil = await context.new_page()
            async with evil.expect_response(lambda r: r.url.endswith("/decide"), timeout=15000) as answer:
                await evil.goto(attacker_url)
            assert (await answer.value).status == 403
        assert (await web_kit.store.get(item.id)).pending
    finally:
        await context.close()


@MEMORY
async def test_the_recorded_notice_says_only_an_approval_id_and_state(web_kit: WebKit) -> None:
    # `?done=` is what the page's own redirect after a decision says; anyone can send an approver a link with
    # another text, which the page would show in its own notice box (escaped, yet believable).
    session = await _signed_in(web_kit)
    try:
        lure = "Policy changed: approve every pending payment from agent-1 today"
        async with session.get(f"{web_kit.url}/approvals", params={"done": lure}) as resp:
            assert resp.status == 200 and "Policy changed" not in await resp.text()
        done = "apr_0123456789abcdef0123456789abcdef approved"
        async with session.get(f"{web_kit.url}/approvals", params={"done": done}) as resp:
            assert f"Recorded: {done}" in await resp.text()
    finally:
        await session.close()


# Right-to-left override: "\u202e" + "7654-A" is drawn as "A-4567". Zero-width space: two names look the same.
INVISIBLE = ("\u202e", "\u200b", "\u2066", "\x1b")


@MEMORY
async def test_the_page_shows_invisible_and_reordering_characters_as_escapes(web_kit: WebKit) -> None:
    # What the approver reads must be what runs: an agent-chosen argument, tool name or principal with a
    # bidi override would be drawn other than it is (the CLI prints such characters escaped too).
    item, _ = await web_kit.store.create_or_join(
        draft(Clock(), {"account": "\u202e7654-A", "memo": "ok\u200b"}, tool="pay\u2066x"), link_s=1800)
    await web_kit.store.decide((await web_kit.store.create_or_join(
        draft(Clock(), {"n": 1}, tool="refund\u202e"), link_s=1800))[0].id, "bob\u200b", "denied", "no\x1b[2K")
    session = await _signed_in(web_kit)
    try:
        async with session.get(f"{web_kit.url}/approvals") as resp:
            html = await resp.text()
    finally:
        await session.close()
    assert item.id in html and not [c for c in INVISIBLE if c in html], [c for c in INVISIBLE if c in html]
    assert "\\u202e7654-A" in html and "pay\\u2066x" in html and "refund\\u202e" in html and "bob\\u200b" in html


@MEMORY
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)")
async def test_a_token_too_large_for_a_cookie_is_refused_with_a_reason(web_kit: WebKit, browser: Any) -> None:
    # Browsers drop a cookie over 4096 bytes without a word, so the sign-in "succeeded" and the person was
    # back at an empty sign-in form, again and again. Tokens with many group claims get that large.
    big = web_kit.token("alice", groups=("approvers", *(f"team-{n:04d}-with-a-long-name" for n in range(150))))
    assert len(big) > 4096
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{web_kit.url}/approvals")
        await page.fill("#token", big)
        await page.click("#signin")
        await page.wait_for_load_state("load")
        text = await page.inner_text("main")
        assert "too large" in text and "Authorization: Bearer" in text, text
        assert not [c for c in await context.cookies() if c["name"] == "customs_approver"]
        await page.fill("#token", web_kit.token("alice"))  # an ordinary token still signs in
        await page.click("#signin")
        await page.wait_for_selector("#me", timeout=15000)
    finally:
        await context.close()


def _path(set_cookie: str) -> str:
    return next(a.split("=", 1)[1] for a in set_cookie.split("; ") if a.startswith("Path="))


async def test_cookies_stay_under_the_public_url_path(start_gateway: Any, tmp_path: Path) -> None:
    # Behind a proxy publishing the gateway at https://gw.example/customs, other applications of that host
    # (https://gw.example/wiki/) must not be sent the approver's token: the cookies' Path is the prefix
    # (`/customs` matches `/customs/approvals`, not `/customsfoo`).
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        signed = await sign_in_behind(start_gateway, tmp_path, "https://gw.example/customs", http)
        assert _path(signed.page_csrf) == "/customs"
        cookies = signed.cookies
        assert _path(cookies["customs_approver"]) == _path(cookies["customs_csrf"]) == "/customs"
        session = f"customs_csrf={signed.csrf}; customs_approver={signed.token}"
        async with http.post(f"{signed.url}/approvals/signout", data={"csrf": signed.csrf}, allow_redirects=False,
                             headers={"Cookie": session}) as resp:
            assert resp.status == 303
            cleared = _set_cookies(resp)  # a cookie is only deleted with the Path it was set with
        assert _path(cleared["customs_approver"]) == _path(cleared["customs_csrf"]) == "/customs"


@MEMORY
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)")
async def test_a_review_link_from_another_site_opens_the_signed_in_page(web_kit: WebKit, browser: Any) -> None:
    # The webhook's Review button is clicked in Slack, another site: a SameSite=Strict cookie is not sent on that
    # navigation, so a person signed in was shown the sign-in form and had to paste their token again.
    from aiohttp import web

    from tests.support.servers import run_aiohttp

    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    review = f"{web_kit.url}/approvals#{item.id}"

    async def chat(_: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=f'<a id="review" href="{review}">Review</a>')

    app = web.Application()
    app.router.add_get("/", chat)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{web_kit.url}/approvals")
        await page.fill("#token", web_kit.token("alice"))
        await page.click("#signin")
        await page.wait_for_selector("#me", timeout=15000)
        async with run_aiohttp(app) as chat_url:
            # localhost and 127.0.0.1 are different sites: this navigation is cross-site, as from Slack
            await page.goto(chat_url.replace("127.0.0.1", "localhost"))
            await page.click("#review")
            await page.wait_for_selector("#me", timeout=15000)
            assert page.url == review  # the fragment survives: the card is the target
            assert await page.evaluate("document.querySelector(':target').dataset.approvalId") == item.id
            # Signed out, the same link shows the sign-in form, after one reload at most (not in circles).
            await context.clear_cookies()
            await page.goto(chat_url.replace("127.0.0.1", "localhost"))
            loads: list[str] = []
            page.on("framenavigated", lambda frame: loads.append(frame.url) if frame == page.main_frame else None)
            await page.click("#review")
            await page.wait_for_selector("#token", timeout=15000)
            await page.wait_for_load_state("load")
            assert await page.query_selector("#me") is None and page.url == review and len(loads) <= 2, loads
    finally:
        await context.close()


@MEMORY
async def test_a_comment_over_the_documented_length_is_refused_not_cut(web_kit: WebKit) -> None:
    # The OpenAPI file says maxLength 2000; the API and the page cut a longer one silently, so the agent and the
    # decision log got a different reason from the one the approver wrote.
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    long = "because " * 300  # 2,400 characters
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", json={"comment": long},
                                 headers=web_kit.bearer("alice")) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["reason"] == "invalid_body" and "2000" in body["error"]["message"]
    session = await _signed_in(web_kit)
    try:
        async with session.get(f"{web_kit.url}/approvals") as resp:
            assert 'maxlength="2000"' in await resp.text()
        csrf = session.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        async with session.post(f"{web_kit.url}/approvals/{item.id}/decide",
                                data={"outcome": "deny", "csrf": csrf, "comment": long}) as resp:
            assert resp.status == 400 and "2000" in await resp.text()
    finally:
        await session.close()
    assert (await web_kit.store.get(item.id)).pending
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", json={"comment": "x" * 2000},
                                 headers=web_kit.bearer("alice")) as resp:
        assert resp.status == 200 and (await resp.json())["comment"] == "x" * 2000


@MEMORY
async def test_state_given_more_than_once_counts_every_value(web_kit: WebKit) -> None:
    # `?state=denied&state=approved` is how many clients send a list (OpenAPI's default for arrays): only the
    # first was read, so the approved calls were silently missing and `?state=pending&state=bogus` was no error.
    clock = Clock()
    denied, _ = await web_kit.store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    approved, _ = await web_kit.store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    await web_kit.store.decide(denied.id, "bob", "denied", None)
    await web_kit.store.decide(approved.id, "bob", "approved", None)
    url = f"{web_kit.url}/api/approvals?state=denied&state=approved"
    async with web_kit.http.get(url, headers=web_kit.bearer("alice")) as resp:
        assert {i["id"] for i in (await resp.json())["items"]} == {denied.id, approved.id}
    async with web_kit.http.get(f"{web_kit.url}/api/approvals?state=pending&state=bogus",
                                headers=web_kit.bearer("alice")) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["reason"] == "invalid_state"
