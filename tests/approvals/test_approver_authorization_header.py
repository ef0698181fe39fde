"""The approvals API takes exactly one Authorization header, as /mcp does (RFC 6750 §3.1: two are a malformed request).

It read the first and ignored the rest, so which credential decided depended on the order a proxy or client put them
in (a proxy that adds its own Authorization header beside the client's could have the client's taken), and the same
request that /mcp refuses 401 `invalid_request` opened the approvals API.
"""

from __future__ import annotations

from multidict import CIMultiDict

from tests.approvals.conftest import WebKit
from tests.approvals.test_page_hardening import MEMORY


@MEMORY
async def test_two_authorization_headers_are_refused_as_a_malformed_request(web_kit: WebKit) -> None:
    alice = web_kit.bearer("alice")["Authorization"]
    for second in (alice, web_kit.bearer("bob")["Authorization"], "Basic dXNlcjpwYXNz"):
        headers = CIMultiDict([("Authorization", alice), ("Authorization", second)])
        for url in (f"{web_kit.url}/api/approvals", f"{web_kit.url}/approvals/fragment"):
            async with web_kit.http.get(url, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 401, body
                assert body["error"]["reason"] == "unauthenticated", body
                assert "More than one Authorization header" in body["error"]["message"], body
                assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
    async with web_kit.http.get(f"{web_kit.url}/api/approvals", headers={"Authorization": alice}) as resp:
        assert resp.status == 200  # one header: the control
