"""The approvers' page forms (sign-in, sign-out, a decision) with a body that is no form in its own terms.

A multipart Content-Type over a body with no such boundary, bytes that are no text in the form's charset, a charset
Python does not know: aiohttp's form reader raised (ValueError, UnicodeDecodeError, LookupError), the handler let it
escape, and the answer was a text/plain 500 with an ERROR traceback logged. The API's JSON bodies and introspection's
form were already 400; the page's forms are now 400 too, a page saying why, and nothing is decided."""

from __future__ import annotations

import logging

import pytest

from tests.approvals.conftest import Clock, WebKit, draft
from tests.approvals.test_page_hardening import MEMORY, _signed_in

UNREADABLE = {
    "multipart without its boundary": ("multipart/form-data; boundary=xx", b"csrf=x&outcome=deny"),
    "not UTF-8": ("application/x-www-form-urlencoded", b"csrf=\xff\xfe&outcome=deny"),
    "an unknown charset": ("application/x-www-form-urlencoded; charset=no-such-charset", b"outcome=deny"),
    "odd bytes in UTF-16": ("application/x-www-form-urlencoded; charset=utf-16", b"outcome=deny!"),  # 13 bytes
}


@MEMORY
@pytest.mark.parametrize("form", ["signin", "signout", "decide"])
async def test_an_unreadable_form_is_a_400_page_not_a_500(web_kit: WebKit, form: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    path = {"signin": "/approvals/signin", "signout": "/approvals/signout", "decide": f"/approvals/{item.id}/decide"}
    session = await _signed_in(web_kit)
    try:
        with caplog.at_level(logging.ERROR):
            for kind, (content_type, body) in UNREADABLE.items():
                async with session.post(f"{web_kit.url}{path[form]}", data=body,
                                        headers={"Content-Type": content_type}, allow_redirects=False) as resp:
                    text = await resp.text()
                    assert resp.status == 400 and resp.content_type == "text/html", (kind, resp.status, text[:300])
                    assert "could not be read" in text, (kind, text)
    finally:
        await session.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert (await web_kit.store.get(item.id)).pending
