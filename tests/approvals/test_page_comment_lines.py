"""A comment typed on the page with line breaks: the browser sends each as CRLF, the textarea counts it as one.

The comment box says `maxlength="2000"`, and Chromium lets a person type 2000 characters with line breaks; the
form then carries every line break as CR LF (HTML's form encoding), so the server counted 2002 for two of them and
refused the decision ("comment must be at most 2000 characters (it has 2002)"), the comment lost with the page.
The page's line breaks are now read as LF, as typed: the limit counts what the person typed, and the agent, the API
and the decision log get the comment with `\\n` breaks, as a comment made through the API or the CLI has them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.approvals.conftest import Clock, WebKit, draft
from tests.approvals.test_browser_page import CHROMIUM, browser  # noqa: F401  (the fixture)
from tests.approvals.test_page_hardening import MEMORY, _signed_in

TYPED = ("x" * 998 + "\n") * 2 + "yy"  # 2000 characters as the textarea counts them, two line breaks


@MEMORY
async def test_a_full_comment_with_line_breaks_typed_in_chromium_is_recorded(
        web_kit: WebKit, browser: Any) -> None:  # noqa: F811
    import os
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian chromium")
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    page = await browser.new_page()
    await page.goto(f"{web_kit.url}/approvals")
    await page.fill("#token", web_kit.token("alice"))
    await page.click("#signin")
    box = f'[data-approval-id="{item.id}"] textarea[name=comment]'
    await page.wait_for_selector(box, timeout=15000)
    await page.fill(box, TYPED)
    assert await page.eval_on_selector(box, "area => area.value.length") == 2000  # the box took all of it
    await page.click(f'[data-approval-id="{item.id}"] button.deny')
    await page.wait_for_selector(f"tr#{item.id}", timeout=15000)  # decided: now in the history
    decided = await web_kit.store.get(item.id)
    assert decided.state == "denied" and decided.comment == TYPED


@MEMORY
async def test_the_form_s_crlf_line_breaks_are_read_as_typed(web_kit: WebKit) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    session = await _signed_in(web_kit)
    try:
        csrf = session.cookie_jar.filter_cookies(web_kit.url)["customs_csrf"].value
        async with session.post(f"{web_kit.url}/approvals/{item.id}/decide", allow_redirects=False,
                                data={"outcome": "deny", "csrf": csrf, "comment": TYPED.replace("\n", "\r\n")}) as resp:
            assert resp.status == 303, (await resp.text())[-400:]
    finally:
        await session.close()
    assert (await web_kit.store.get(item.id)).comment == TYPED
