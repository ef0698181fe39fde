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
