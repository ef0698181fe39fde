"""Cursor pagination of the approvals listing (docs/approvals.md): a keyset position, newest first, on both stores
and through `GET /api/approvals?cursor=`. Walking every page gives every item once, also while new items are made
between pages; a state filter looks through at most LIST_WINDOW items a page and the walk goes on past them (the
newest 1,000 used to be all an approver or auditor could see)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.approvals.cursor import Cursor, InvalidCursor, decode, encode, new_key
from gateway.approvals.store import LIST_WINDOW
from tests.approvals.conftest import Clock, StoreKit, WebKit, draft

KEY = new_key()


async def _make(store: Any, clock: Clock, n: int, tag: str, *, step: float = 0.001) -> list[str]:
    ids = []
    for i in range(n):
        clock.advance(step)
        made, created = await store.create_or_join(draft(clock, {"n": f"{tag}-{i}"}), link_s=1800)
        assert created
        ids.append(made.id)
    return ids


async def _walk(store: Any, states: list[str] | None, limit: int, between: Any = None) -> list[str]:
    """Every page from the first to the one without a next cursor; `between(page_no)` runs between pages."""
    seen: list[str] = []
    after = None
    for page_no in range(10_000):
        page = await store.page(states, limit, after)
        assert len(page.items) <= limit
        seen.extend(i.id for i in page.items)
        if page.next is None:
            return seen
        assert page.next != after  # the walk moves on
        after = decode(encode(page.next, KEY), page.next.order, KEY)  # as a client hands it back: through its text
        if between is not None:
            await between(page_no)
    raise AssertionError("the walk did not end")


async def test_walking_every_page_gives_every_item_once_newest_first(store: Any, clock: Clock) -> None:
    ids = await _make(store, clock, 23, "a")
    assert await _walk(store, None, 5) == ids[::-1]
    assert await _walk(store, None, 23) == ids[::-1]
    assert await _walk(store, None, 1000) == ids[::-1]
    last = await store.page(None, 23)
    assert last.next is None  # a full page that ends the listing says so: no empty page to fetch after it
    assert [i.id for i in await store.list(None, 7)] == ids[::-1][:7]  # list(): the first page, as before


async def test_items_created_during_the_walk_cause_no_duplicate_or_gap(store: Any, clock: Clock) -> None:
    old = await _make(store, clock, 30, "old")
    newer: list[str] = []

    async def create_more(page_no: int) -> None:
        newer.extend(await _make(store, clock, 3, f"new{page_no}"))

    walked = await _walk(store, None, 4, create_more)
    assert walked == old[::-1]  # every older item exactly once, in order; the new ones are ahead of the walk
    assert newer and not set(newer) & set(walked)
    assert await _walk(store, None, 1000) == (old + newer)[::-1]


async def test_items_made_at_the_same_moment_are_each_listed_once(store: Any, clock: Clock) -> None:
    ids = await _make(store, clock, 9, "tied", step=0.0)  # one creation time: the id orders them
    ids += await _make(store, clock, 4, "later")
    walked = await _walk(store, None, 2)
    assert sorted(walked) == sorted(ids) and len(walked) == len(set(walked)) == 13
    assert walked[:4] == ids[::-1][:4]


async def test_a_state_filter_walks_with_the_cursor(store: Any, clock: Clock) -> None:
    ids = await _make(store, clock, 40, "mixed")
    denied = ids[::3]
    for approval_id in denied:
        await store.decide(approval_id, "alice", "denied", "no")
    for approval_id in ids[1::3]:
        await store.decide(approval_id, "bob", "approved", None)
    pending = ids[2::3]
    assert await _walk(store, ["denied"], 3) == denied[::-1]
    assert await _walk(store, ["pending"], 4) == pending[::-1]
    assert await _walk(store, ["denied", "pending"], 5) == sorted(denied + pending, key=ids.index)[::-1]

    async def decide_one(page_no: int) -> None:  # an item leaving `pending` during the walk: no other one skipped
        if page_no == 0:
            await store.decide(pending[-1], "carol", "denied", None)

    assert await _walk(store, ["pending"], 2, decide_one) == pending[::-1]


async def test_the_walk_goes_past_the_window_a_state_filter_looks_through(store: Any, clock: Clock) -> None:
    (old_denied,) = await _make(store, clock, 1, "old")
    await store.decide(old_denied, "alice", "denied", "no")
    newer = await _make(store, clock, LIST_WINDOW + 5, "new")
    for approval_id in newer:
        await store.decide(approval_id, "bob", "approved", None)
    first = await store.page(["denied"], 100)
    assert first.items == [] and first.next is not None  # nothing among the newest 1,000, and more to look at
    assert await _walk(store, ["denied"], 100) == [old_denied]


@pytest.mark.parametrize("kit", ["redis"], indirect=True)  # Redis only: replicas, index entries
async def test_items_aged_out_of_redis_mid_walk_are_skipped_not_a_stop(kit: StoreKit, clock: Clock) -> None:
    """Redis drops an item's hash `keep_s` after its decision; the walk passes over its index entry (and drops it)."""
    assert kit.redis is not None
    import redis.asyncio as aioredis

    store = await kit.make()
    ids = await _make(store, clock, 12, "aging")
    client = aioredis.from_url(kit.redis.url)
    try:
        first = await store.page(None, 3)
        await client.delete(*(f"t:approvals:item:{i}" for i in ids[2:6]))
        rest = await _walk_from(store, first.next)
        assert [i.id for i in first.items] + rest == [i for i in ids[::-1] if i not in ids[2:6]]
        assert await client.zcard("t:approvals:all") == 8  # the gone ones' entries left the index
    finally:
        await client.aclose()


async def _walk_from(store: Any, after: Any) -> list[str]:
    seen: list[str] = []
    while after is not None:
        page = await store.page(None, 3, after)
        seen.extend(i.id for i in page.items)
        after = page.next
    return seen


async def test_a_cursor_of_one_listing_is_refused_by_another(store: Any, clock: Clock) -> None:
    await _make(store, clock, 3, "x")
    pending = await store.page(["pending"], 1)
    assert pending.next is not None
    with pytest.raises(InvalidCursor):
        decode(encode(pending.next, KEY), "created", KEY)
    with pytest.raises(InvalidCursor):
        await store.page(None, 1, pending.next)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


BAD_CURSORS = ["garbage!", "", "x" * 600, _b64("not json"), _b64("[1]"), _b64('{"a": 1}'),
               _b64('[1, "created", NaN, "apr_1"]'), _b64('[1, "created", "1.0", "apr_1"]'),
               _b64('[1, "created", true, "apr_1"]'), _b64('[1, "created", 1.0, "apr 1\\n"]'),
               _b64('[9, "created", 1.0, "apr_1"]'), _b64('[1, "sideways", 1.0, "apr_1"]')]


@pytest.mark.parametrize("text", [*BAD_CURSORS, "c.", "c.garbage!", "c.c."])
def test_an_unreadable_cursor_is_refused(text: str) -> None:
    with pytest.raises(InvalidCursor):
        decode(text, "created", KEY)


def _sealed(payload: bytes) -> str:
    """`payload` sealed as encode seals a position: what only someone holding the key could make."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from gateway.approvals import cursor
    nonce = os.urandom(12)
    return base64.urlsafe_b64encode(nonce + AESGCM(KEY).encrypt(nonce, payload, cursor._AAD)).decode().rstrip("=")


@pytest.mark.parametrize("text", BAD_CURSORS[3:])
def test_a_sealed_but_ill_formed_position_is_refused(text: str) -> None:
    """Behind the seal the position is still checked (a key leaked or a bug must not reach the stores)."""
    payload = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    with pytest.raises(InvalidCursor):
        decode(_sealed(payload), "created", KEY)
    assert decode(_sealed(b'[1,"created",1.5,"apr_1"]'), "created", KEY) == Cursor("created", 1.5, "apr_1")


def test_a_cursor_reads_back_exactly() -> None:
    cursor = Cursor("created", 1790000000.123457, "apr_" + "0" * 32)
    assert decode(encode(cursor, KEY), "created", KEY) == cursor
    assert all(c.isalnum() or c in "-_." for c in encode(cursor, KEY))  # safe in a query string as it is


def test_no_cursor_starts_with_a_dash() -> None:
    """`customs approvals list --cursor <it>` reads a value starting with '-' as an option (argparse: "expected
    one argument"), which base64url of random bytes did once in 64 cursors."""
    cursor = Cursor("created", 1790000000.5, "apr_1")
    texts = [encode(cursor, KEY) for _ in range(2000)]
    assert not [text for text in texts if text.startswith("-")]
    assert all(decode(text, "created", KEY) == cursor for text in texts[:50])


def test_a_cursor_written_before_the_prefix_still_reads() -> None:
    """Cursors of replicas from before (plain base64url, no prefix) go on working during a rolling upgrade."""
    cursor = Cursor("expiry", 1790000000.25, "apr_2")
    old = encode(cursor, KEY).removeprefix("c.")
    assert decode(old, "expiry", KEY) == cursor


# -- through the API ----------------------------------------------------------------------------------------

async def _get(kit: WebKit, query: str) -> tuple[int, dict[str, Any]]:
    async with kit.http.get(f"{kit.url}/api/approvals?{query}", headers=kit.bearer("alice")) as resp:
        return resp.status, await resp.json()


async def test_the_api_walks_every_page_with_next_cursor(web_kit: WebKit, clock: Clock) -> None:
    ids = await _make(web_kit.store, clock, 7, "api")
    status, body = await _get(web_kit, "state=pending")
    assert status == 200 and set(body) == {"items"}  # all of it in one page: the pinned shape, no next_cursor
    walked: list[str] = []
    query = "state=pending&limit=3"
    while True:
        status, body = await _get(web_kit, query)
        assert status == 200
        walked.extend(i["id"] for i in body["items"])
        if body.get("next_cursor") is None:
            break
        assert isinstance(body["next_cursor"], str)
        query = f"state=pending&limit=3&cursor={body['next_cursor']}"
        if len(walked) == 3:
            await _make(web_kit.store, clock, 2, "during")  # newer than the walk: not in it
    assert walked == ids[::-1]


async def test_the_api_refuses_a_bad_cursor_with_400_invalid_cursor(web_kit: WebKit, clock: Clock) -> None:
    await _make(web_kit.store, clock, 3, "api")
    _, body = await _get(web_kit, "state=pending&limit=1")
    pending_cursor = body["next_cursor"]
    nan = _b64('[1, "created", NaN, "a"]')
    for query in ("cursor=garbage!", "cursor=", f"cursor={nan}",
                  f"state=denied&cursor={pending_cursor}", f"cursor={'x' * 600}"):
        status, body = await _get(web_kit, query)
        assert status == 400 and body["error"]["reason"] == "invalid_cursor", (query, body)
        assert body["error"]["message"]


async def test_the_api_pages_what_an_approver_may_see(kit: StoreKit, tmp_path: Any) -> None:
    """Items policy hides from the approver neither use up a page nor stop the walk; a walk through more hidden
    items than one answer looks at goes on page by page (short or empty pages with a next_cursor)."""
    from tests.approvals.test_page_listing import docs_approver  # the approver sees the "docs" tool's calls only

    store = await kit.make()
    clock = Clock()
    mine: list[str] = []
    for n in range(7):
        for _ in range(3 if n < 5 else 1200 if n == 5 else 0):  # others' calls between; 1,200 behind the newest
            clock.advance(0.001)
            await store.create_or_join(draft(clock, {"other": clock.now}), link_s=1800)
        clock.advance(0.001)
        made, _ = await store.create_or_join(draft(clock, {"n": n}, tool="docs"), link_s=1800)
        mine.append(made.id)
    async with docs_approver(store, tmp_path) as (url, http, headers):
        walked: list[str] = []
        query = "limit=2"
        for _ in range(100):
            async with http.get(f"{url}/api/approvals?{query}", headers=headers) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert len(body["items"]) <= 2
            walked.extend(i["id"] for i in body["items"])
            if "next_cursor" not in body:
                break
            query = f"limit=2&cursor={body['next_cursor']}"
        assert walked == mine[::-1]
