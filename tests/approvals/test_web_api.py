"""The approvals REST API and page over a real aiohttp server: shapes, authorization, CSRF, live events."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.approvals.conftest import Clock, WebKit, draft

SHAPE = {"id", "state", "upstream", "tool", "principal", "chain", "tenant", "args", "args_digest", "policies",
         "created_at", "expires_at", "decided_by", "comment"}


async def _item(kit: WebKit, clock: Clock | None = None, **kw: Any) -> Any:
    item, _ = await kit.store.create_or_join(draft(clock or Clock(), **kw), link_s=1800)
    return item


async def test_list_get_approve_shapes(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    headers = web_kit.bearer("alice")
    async with web_kit.http.get(f"{web_kit.url}/api/approvals?state=pending", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    [listed] = body["items"]
    assert SHAPE <= set(listed) and listed["id"] == item.id and listed["state"] == "pending"
    assert listed["chain"] == ["orchestrator"] and listed["tenant"] == "acme" and listed["decided_by"] is None
    async with web_kit.http.get(f"{web_kit.url}/api/approvals/{item.id}", headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["args_digest"] == item.args_digest
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve", headers=headers,
                                 json={"comment": "fine"}) as resp:
        assert resp.status == 200
        approved = await resp.json()
    assert approved["state"] == "approved" and approved["decided_by"] == "alice" and approved["comment"] == "fine"
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", headers=web_kit.bearer("bob"),
                                 json={"comment": "late"}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["reason"] == "already_decided"
    async with web_kit.http.get(f"{web_kit.url}/api/approvals?state=approved", headers=headers) as resp:
        assert [i["id"] for i in (await resp.json())["items"]] == [item.id]


async def test_deny_with_comment(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", headers=web_kit.bearer("alice"),
                                 json={"comment": "wrong account"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["comment"] == "wrong account"
    assert (await web_kit.store.get(item.id)).state == "denied"


async def test_an_api_comment_is_kept_as_the_page_keeps_one(web_kit: WebKit) -> None:
    """Surrounding whitespace goes and a blank comment is none, as the page's form has it (on the old code the API
    recorded "   " as the comment the agent and the decision log were given)."""
    for n, (comment, kept) in enumerate((("   \n ", None), ("  wrong account \n", "wrong account"))):
        item = await _item(web_kit, args={"amount": 10 + n, "account": "A-1"})  # two calls, two items
        async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", headers=web_kit.bearer("alice"),
                                     json={"comment": comment}) as resp:
            assert resp.status == 200
            assert (await resp.json())["comment"] == kept
        assert (await web_kit.store.get(item.id)).comment == kept


async def test_self_approval_is_forbidden(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    for sub in ("agent-1", "orchestrator"):  # the requester, and an actor in its delegation chain
        async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve",
                                     headers=web_kit.bearer(sub), json={}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["reason"] == "self_approval"
    assert (await web_kit.store.get(item.id)).pending


async def test_an_agent_of_the_call_may_not_decide_it_through_a_persons_delegated_token(web_kit: WebKit) -> None:
    """A token of a person (`sub` bob) that an actor of the held call holds (`act`: the call's own orchestrator)
    is that agent deciding its own call: refused as self_approval, like the agent's own token (it used to be
    bob's approval), and the page shows the call to that token without buttons."""
    item = await _item(web_kit)
    for act in ({"sub": "orchestrator"}, {"sub": "someone", "act": {"sub": "agent-1"}}):
        token = web_kit.issuer.mint("bob", aud=web_kit.audience, groups=["approvers"], act=act)
        for action in ("approve", "deny"):
            async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/{action}",
                                         headers={"Authorization": f"Bearer {token}"}, json={}) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["reason"] == "self_approval"
        async with web_kit.http.get(f"{web_kit.url}/approvals/fragment",
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
            fragment = await resp.text()
        assert "own-behalf" in fragment and f"/approvals/{item.id}/decide" not in fragment
    assert (await web_kit.store.get(item.id)).pending
    helper = web_kit.issuer.mint("bob", aud=web_kit.audience, groups=["approvers"], act={"sub": "assistant"})
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve",
                                 headers={"Authorization": f"Bearer {helper}"}, json={}) as resp:
        assert resp.status == 200  # an actor that has nothing to do with the call: bob's decision


async def test_policy_deny_is_forbidden_and_hidden(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    outsider = web_kit.bearer("mallory", groups=("interns",))
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve", headers=outsider) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["reason"] == "forbidden"
    async with web_kit.http.get(f"{web_kit.url}/api/approvals/{item.id}", headers=outsider) as resp:
        assert resp.status == 403
    async with web_kit.http.get(f"{web_kit.url}/api/approvals", headers=outsider) as resp:
        assert (await resp.json())["items"] == []
    assert ("mallory", item.id) in web_kit.checks and (await web_kit.store.get(item.id)).pending


async def test_authentication_and_input_errors(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    url = f"{web_kit.url}/api/approvals"
    async with web_kit.http.get(url) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["reason"] == "unauthenticated"
    async with web_kit.http.get(url, headers={"Authorization": "Bearer not-a-jwt"}) as resp:
        assert resp.status == 401
    async with web_kit.http.get(url, headers={"Authorization": "Basic abc"}) as resp:
        assert resp.status == 401
    headers = web_kit.bearer("alice")
    async with web_kit.http.get(f"{url}/apr_nope", headers=headers) as resp:
        assert resp.status == 404
    async with web_kit.http.get(f"{url}?state=bogus", headers=headers) as resp:
        assert resp.status == 400
    async with web_kit.http.get(f"{url}?limit=x", headers=headers) as resp:
        assert resp.status == 400
    async with web_kit.http.post(f"{url}/{item.id}/approve", headers=headers, data=b"{not json") as resp:
        assert resp.status == 400
    async with web_kit.http.post(f"{url}/{item.id}/approve", headers=headers, json={"comment": 5}) as resp:
        assert resp.status == 400
    # A charset Python does not know, or bytes that are no text in the named one (was a text/plain 500).
    for raw, charset in ((b'{"comment": "ok"}', "no-such-charset"), (b'{"comment": "\xff"}', "utf-8")):
        typed = {**headers, "Content-Type": f"application/json; charset={charset}"}
        async with web_kit.http.post(f"{url}/{item.id}/approve", data=raw, headers=typed) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["reason"] == "invalid_body", charset
    for body in (["ok"], 5, "ok"):  # not an object: refused, and the item stays pending
        async with web_kit.http.post(f"{url}/{item.id}/deny", headers=headers, json=body) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["reason"] == "invalid_body"
    async with web_kit.http.get(f"{url}/{item.id}", headers=headers) as resp:
        assert (await resp.json())["state"] == "pending"
    async with web_kit.http.post(f"{url}/apr_nope/approve", headers=headers, json={}) as resp:
        assert resp.status == 404


async def _signed_in(kit: WebKit, sub: str = "alice") -> Any:
    """A cookie jar signed in through the page form (as a person would)."""
    import aiohttp

    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.get(f"{kit.url}/approvals") as resp:
        assert resp.status == 200 and "Sign in" in await resp.text()
    csrf = session.cookie_jar.filter_cookies(kit.url)["customs_csrf"].value
    async with session.post(f"{kit.url}/approvals/signin", data={"token": kit.token(sub), "csrf": csrf},
                            allow_redirects=False) as resp:
        assert resp.status == 303
        session_cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("customs_approver="))
        assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie
    async with session.get(f"{kit.url}/approvals") as resp:
        assert resp.status == 200 and "Signed in as" in await resp.text()
    return session


async def test_cookie_session_requires_csrf(web_kit: WebKit) -> None:
    item = await _item(web_kit)
    session = await _signed_in(web_kit)
    try:
        csrf = session.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        api = f"{web_kit.url}/api/approvals/{item.id}/approve"
        async with session.post(api, json={"comment": "no token"}) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["reason"] == "csrf_failed"
        async with session.post(api, json={}, headers={"X-CSRF-Token": "forged"}) as resp:
            assert resp.status == 403
        form = f"{web_kit.url}/approvals/{item.id}/decide"
        async with session.post(form, data={"outcome": "approve", "csrf": "forged"}) as resp:
            assert resp.status == 403 and "CSRF" in await resp.text()
        assert (await web_kit.store.get(item.id)).pending
        async with session.post(form, data={"outcome": "approve", "csrf": csrf, "comment": "ok"}) as resp:
            assert resp.status == 200 and "Recorded" in await resp.text()
        assert (await web_kit.store.get(item.id)).state == "approved"
        async with session.post(form, data={"outcome": "deny", "csrf": csrf}) as resp:
            assert resp.status == 409 and "Already approved" in await resp.text()
    finally:
        await session.close()


async def test_signin_errors_and_signout(web_kit: WebKit) -> None:
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{web_kit.url}/approvals/signin", data={"token": "x", "csrf": "y"}) as resp:
            assert resp.status == 403  # no CSRF cookie: login CSRF refused
        async with session.get(f"{web_kit.url}/approvals") as resp:
            assert resp.status == 200
        csrf = session.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        async with session.post(f"{web_kit.url}/approvals/signin", data={"token": "garbage", "csrf": csrf}) as resp:
            assert resp.status == 401 and "Sign-in failed" in await resp.text()
    session = await _signed_in(web_kit)
    try:
        csrf = session.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        async with session.post(f"{web_kit.url}/approvals/signout", data={"csrf": csrf}) as resp:
            assert resp.status == 200 and "Sign in" in await resp.text()
        async with session.get(f"{web_kit.url}/api/approvals") as resp:
            assert resp.status == 401
    finally:
        await session.close()


async def test_page_shows_pending_details_escaped(web_kit: WebKit) -> None:
    await _item(web_kit, args={"note": "<script>alert(1)</script>", "amount": 5})
    session = await _signed_in(web_kit)
    try:
        async with session.get(f"{web_kit.url}/approvals") as resp:
            html = await resp.text()
        assert "payments / pay" in html and "agent-1" in html and "orchestrator" in html and "acme" in html
        assert "pay-needs-approval" in html and "&lt;script&gt;" in html and "<script>alert" not in html
        async with session.get(f"{web_kit.url}/approvals/fragment") as resp:
            assert resp.status == 200 and "Waiting for a decision (1)" in await resp.text()
    finally:
        await session.close()


async def test_events_stream_announces_changes(web_kit: WebKit) -> None:
    async with web_kit.http.get(f"{web_kit.url}/api/approvals/events", headers=web_kit.bearer("alice")) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert await asyncio.wait_for(resp.content.readline(), 5) == b": connected\n"
        item = await _item(web_kit)
        seen = b""
        while item.id.encode() not in seen:
            seen += await asyncio.wait_for(resp.content.readline(), 10)
        assert re.search(rb"event: change", seen)


async def test_refused_person_gets_403_not_the_decided_item(web_kit: WebKit) -> None:
    """A 409 carries the whole item: someone who may not decide (or see) it gets 403, decided or not."""
    item = await _item(web_kit)
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve", headers=web_kit.bearer("alice"),
                                 json={"comment": "ok"}) as resp:
        assert resp.status == 200
    for headers, reason in ((web_kit.bearer("mallory", groups=("interns",)), "forbidden"),
                            (web_kit.bearer("agent-1"), "self_approval")):
        for action in ("approve", "deny"):
            async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/{action}", headers=headers,
                                         json={"comment": "x"}) as resp:
                body = await resp.json()
            assert resp.status == 403 and body["error"]["reason"] == reason and "approval" not in body["error"]
    async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/deny", headers=web_kit.bearer("bob"),
                                 json={"comment": "late"}) as resp:
        assert resp.status == 409 and (await resp.json())["error"]["approval"]["state"] == "approved"


async def test_limit_outside_the_documented_range_is_refused(web_kit: WebKit) -> None:
    """`limit` is an integer 1-1000 (the OpenAPI file's minimum and maximum): anything else is a 400, not clamped."""
    await _item(web_kit)
    url, headers = f"{web_kit.url}/api/approvals", web_kit.bearer("alice")
    # int() would take " 5", "+5", "1_000" and "\u0661\u0660" (Arabic-Indic "10"): only ASCII digits count
    for bad in ("0", "-5", "1001", "100000", "1.5", "1_000", "x", "", " 5", "+5", "\u0661\u0660"):
        async with web_kit.http.get(url, params={"limit": bad}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 400, bad
            assert body["error"]["reason"] == "invalid_limit" and body["error"]["message"], bad
    for good in ("1", "1000", "100"):
        async with web_kit.http.get(url, params={"limit": good}, headers=headers) as resp:
            assert resp.status == 200 and len((await resp.json())["items"]) == 1, good


async def test_a_body_nested_past_the_parsers_limit_is_a_bad_body_not_a_crash(web_kit: WebKit) -> None:
    """`[[[[…]]]]` 100,000 deep fits in the body limit; the JSON parser gives up with a RecursionError, which
    escaped as a bare 500 `Server got itself in trouble` and a traceback in the log."""
    item = await _item(web_kit)
    for body in ("[" * 100_000 + "]" * 100_000, '{"comment": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        async with web_kit.http.post(f"{web_kit.url}/api/approvals/{item.id}/approve", data=body,
                                     headers={**web_kit.bearer("alice"), "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["reason"] == "invalid_body"
    assert (await web_kit.store.get(item.id)).pending


async def test_a_token_in_the_query_string_is_refused_and_decides_nothing(web_kit: WebKit) -> None:
    """A bearer token in the URL ends up in logs and browser history: refused 401 as /mcp refuses it, even beside
    a valid Authorization header (it used to be ignored: the header alone decided)."""
    item = await _item(web_kit)
    token = web_kit.bearer("alice")["Authorization"].removeprefix("Bearer ")
    requests = [("GET", "/api/approvals"), ("GET", f"/api/approvals/{item.id}"),
                ("POST", f"/api/approvals/{item.id}/approve"), ("GET", "/api/approvals/events")]
    for method, path in requests:
        for headers in ({}, web_kit.bearer("alice")):
            async with web_kit.http.request(method, f"{web_kit.url}{path}?access_token={token}", json={},
                                            headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 401 and body["error"]["reason"] == "unauthenticated", (path, body)
                assert "query string" in body["error"]["message"]
                assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
    assert (await web_kit.store.get(item.id)).pending
