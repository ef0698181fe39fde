"""The approvers' page behind a reverse proxy that publishes the gateway under a path prefix.

`listen.public_url: http://127.0.0.1:<proxy>/customs`: the proxy strips `/customs` and the gateway serves its
routes at its root, so every URL the page hands the browser (redirects, form actions, the live update's
fetches) must carry the prefix. They used to be root paths (`Location: /approvals`, `action="/approvals/signin"`),
which the proxy does not forward: sign-in, sign-out and every decision ended on a 404."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.demo.servers import payments_server
from tests.conftest import bound_socket
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
PREFIX = "/customs"
SHOPPER = "spiffe://customs.demo/agent/shopper"
HOP = {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}


def stripping_proxy(target: list[str]) -> web.Application:
    """Forwards `/customs/<path>` to the gateway's `/<path>` (streaming, redirects untouched); anything else 404."""

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.request(request.method, target[0] + "/" + request.match_info["tail"],
                                    params=request.query, headers=headers, data=await request.read(),
                                    allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

    app = web.Application()
    app.router.add_route("*", PREFIX + "/{tail:.*}", forward)
    return app


class Env:
    def __init__(self, gateway: Any, issuer: TestIssuer, public: str) -> None:
        self.gateway, self.issuer, self.public = gateway, issuer, public

    def agent(self) -> str:
        return self.issuer.mint(SHOPPER, aud=self.public + "/mcp", tenant="acme")

    def alice(self) -> str:
        return self.issuer.mint("alice", aud=self.public + "/mcp", groups=["approvers", "finance"])


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    target: list[str] = []
    runner = web.AppRunner(stripping_proxy(target))
    await runner.setup()
    sock = bound_socket()
    public = f"http://127.0.0.1:{sock.getsockname()[1]}{PREFIX}"
    await web.SockSite(runner, sock).start()
    try:
        async with run_http_server(payments_server()) as url:
            gw = await start_gateway({
                "listen": {"public_url": public},
                "upstreams": [{"name": "payments", "url": url}],
                "identity": {"mode": "jwt", "issuers": [issuer.config(audience=public + "/mcp")]},
                "policies": {"dir": str(REPO / "policies")},
                "approvals": {"wait_s": 60, "keepalive_s": 0.2},
            })
            target.append(gw.url)
            yield Env(gw, issuer, public)
    finally:
        await runner.cleanup()


async def _held(env: Env) -> tuple[asyncio.Task[str], str]:
    """An agent's payment held for approval (straight to the gateway: the page is what is tested here), and its
    approval id."""
    async def pay() -> str:
        async with sdk_client(env.gateway.mcp, env.agent()) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-9", "amount": 70})
            return str(result.content[0].text)

    waiting = asyncio.create_task(pay())
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {env.alice()}"}) as http:
        async with asyncio.timeout(15):
            while True:
                async with http.get(env.public + "/api/approvals?state=pending") as resp:
                    items = (await resp.json())["items"]
                if items:
                    return waiting, str(items[0]["id"])
                await asyncio.sleep(0.05)


async def test_redirects_and_forms_carry_the_prefix(env: Env) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies of an IP host
        async with http.get(env.public + "/approvals") as resp:
            page = await resp.text()
        assert resp.status == 200 and f'action="{PREFIX}/approvals/signin"' in page
        csrf = resp.cookies["customs_csrf"].value
        async with http.post(env.public + "/approvals/signin", data={"csrf": csrf, "token": env.alice()},
                             allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"{PREFIX}/approvals"
        async with http.get(env.public + "/approvals") as resp:
            page = await resp.text()
        assert f'action="{PREFIX}/approvals/signout"' in page and f'data-base="{PREFIX}"' in page
        waiting, approval_id = await _held(env)
        async with http.get(env.public + "/approvals") as resp:
            page = await resp.text()
        assert f'action="{PREFIX}/approvals/{approval_id}/decide"' in page
        csrf = http.cookie_jar.filter_cookies(env.public)["customs_csrf"].value
        async with http.post(f"{env.public}/approvals/{approval_id}/decide", allow_redirects=False,
                             data={"csrf": csrf, "outcome": "approve", "comment": "ok"}) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"{PREFIX}/approvals?done={approval_id}+approved"
        assert await asyncio.wait_for(waiting, 20) == "paid 70.0 to acme-9"
        async with http.post(env.public + "/approvals/signout", data={"csrf": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"{PREFIX}/approvals"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium (apt-get install -y chromium)")
async def test_a_person_behind_the_proxy_signs_in_approves_and_signs_out(env: Env) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = await chromium.new_page()
            waiting, approval_id = await _held(env)
            await page.goto(f"{env.public}/approvals#{approval_id}")  # the webhook's Review link
            await page.fill("#token", env.alice())
            await page.click("#signin")  # the form posts with the page's Origin (Referrer-Policy same-origin)
            await page.wait_for_selector("#me", timeout=15000)
            assert page.url == f"{env.public}/approvals#{approval_id}"
            await page.click(f'[data-approval-id="{approval_id}"] button.approve')
            await page.wait_for_selector(f"tr#{approval_id}", timeout=15000)  # decided: in the history
            assert page.url.startswith(f"{env.public}/approvals?done=")
            assert await asyncio.wait_for(waiting, 20) == "paid 70.0 to acme-9"
            held_again, second = await _held(env)  # the live update (fetch + event stream) shows a new call
            await page.wait_for_selector(f'[data-approval-id="{second}"]', timeout=15000)
            await page.click("header button[type=submit]")  # Sign out
            await page.wait_for_selector("#token", timeout=15000)
            assert page.url == f"{env.public}/approvals"
            held_again.cancel()
            await asyncio.gather(held_again, return_exceptions=True)
        finally:
            await chromium.close()
