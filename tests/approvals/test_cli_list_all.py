"""`customs approvals list --all` follows the API's next_cursor to the last page, against a real approvals API (both
stores); `--cursor` fetches one page further, and a page with more after it says how to get them."""

from __future__ import annotations

import json

from aiohttp import web

from tests.approvals.conftest import Clock, WebKit, draft
from tests.approvals.test_cli_approvals import another_service
from tests.support.cli import customs_async, customs_main


async def _made(kit: WebKit, clock: Clock, n: int) -> list[str]:
    ids = []
    for i in range(n):
        clock.advance(0.001)
        item, _ = await kit.store.create_or_join(draft(clock, {"n": i}), link_s=1800)
        ids.append(item.id)
    return ids


async def test_all_lists_every_item_once_across_pages(web_kit: WebKit, clock: Clock) -> None:
    ids = await _made(web_kit, clock, 8)
    for denied in ids[:3]:
        await web_kit.store.decide(denied, "bob", "denied", None)
    token = web_kit.token("alice")
    code, out, err = await customs_async("approvals", "list", "--all", "--limit", "3", "--state", "all",
                                         "--url", web_kit.url, token=token)
    assert code == 0, err
    rows = out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids[::-1]
    code, out, err = await customs_async("approvals", "list", "--all", "--limit", "2", "--state", "pending", "--json",
                                         "--url", web_kit.url, token=token)
    assert code == 0, err
    assert [i["id"] for i in json.loads(out)] == ids[3:][::-1]


async def test_one_page_says_how_to_get_the_next_and_cursor_fetches_it(web_kit: WebKit, clock: Clock) -> None:
    ids = await _made(web_kit, clock, 5)
    token = web_kit.token("alice")
    code, out, err = await customs_async("approvals", "list", "--limit", "2", "--url", web_kit.url, token=token)
    assert code == 0 and [row.split()[0] for row in out.splitlines()[1:]] == ids[::-1][:2]
    assert "--all" in err and "--cursor " in err
    cursor = err.split("--cursor ", 1)[1].split()[0]
    code, out, err = await customs_async("approvals", "list", "--limit", "2", "--cursor", cursor,
                                         "--url", web_kit.url, token=token)
    assert code == 0 and [row.split()[0] for row in out.splitlines()[1:]] == ids[::-1][2:4], err
    code, out, err = await customs_async("approvals", "list", "--limit", "3", "--cursor", cursor,
                                         "--url", web_kit.url, token=token)
    assert code == 0 and "--cursor" not in err, err  # the last page: nothing more to fetch
    code, _, err = await customs_async("approvals", "list", "--cursor", "bogus!", "--url", web_kit.url, token=token)
    assert code == 1 and "400 invalid_cursor" in err


def test_help_names_all_and_cursor() -> None:
    result = customs_main("approvals", "list", "--help")
    assert result.returncode == 0 and "--all" in result.stdout and "--cursor" in result.stdout
    assert "next_cursor" in result.stdout or "every page" in result.stdout
    result = customs_main("approvals", "list", "--all", "--cursor", "abc", "--token", "t")
    assert result.returncode == 2 and "--all" in result.stderr


async def test_all_stops_on_a_gateway_that_repeats_its_cursor(web_kit: WebKit) -> None:
    answer = {"items": [], "next_cursor": "same"}
    async with another_service(lambda: web.json_response(answer)) as url:
        code, _, err = await customs_async("approvals", "list", "--all", "--url", url, token=web_kit.token("alice"))
    assert code == 3 and "next_cursor" in err and "Traceback" not in err
