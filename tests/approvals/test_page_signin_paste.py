"""A token pasted into the sign-in box with line breaks (wrapped by a terminal or a mail client) signs in.

The box is a multi-line textarea, but the pasted token's line breaks (sent as CR LF) were kept inside it, and the
sign-in failed with "Authorization must be a Bearer token", which says nothing about what was wrong. A bearer
token holds no whitespace (RFC 6750's b64token), so whitespace anywhere in what was pasted is left out."""

from __future__ import annotations

import aiohttp
import pytest

from tests.approvals.conftest import WebKit
from tests.approvals.test_page_hardening import MEMORY


async def _sign_in(kit: WebKit, pasted: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{kit.url}/approvals") as resp:
            assert resp.status == 200
        csrf = session.cookie_jar.filter_cookies(kit.url)["customs_csrf"].value
        async with session.post(f"{kit.url}/approvals/signin", data={"token": pasted, "csrf": csrf},
                                allow_redirects=False) as resp:
            return resp.status, await resp.text()


@MEMORY
@pytest.mark.parametrize("wrap", ["\r\n", "\n", " \r\n  ", "\t"])
async def test_a_wrapped_token_signs_in(web_kit: WebKit, wrap: str) -> None:
    token = web_kit.token("alice")
    for pasted in (wrap.join(token[i:i + 64] for i in range(0, len(token), 64)), f"Bearer{wrap}{token}"):
        status, text = await _sign_in(web_kit, pasted)
        assert status == 303, text[-500:]


@MEMORY
async def test_a_token_that_does_not_verify_still_fails(web_kit: WebKit) -> None:
    token = web_kit.token("alice")
    status, text = await _sign_in(web_kit, token[:-4] + "\r\n" + "AAAA")
    assert status == 401 and "Sign-in failed" in text
