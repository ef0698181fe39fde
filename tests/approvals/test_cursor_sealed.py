"""Listing cursors are sealed (AES-GCM, cursor.py): a next_cursor built on an item the approver may not see, or of
another state, names neither its id nor its times in any form a client can read; every replica sharing a Redis
store reads the others' cursors; a forged or tampered one is 400 invalid_cursor."""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.approvals.cursor import PREFIX
from gateway.approvals.model import Approval
from gateway.approvals.store import LIST_WINDOW
from gateway.approvals.web import approval_routes
from gateway.config.model import IdentityConfig, IssuerConfig
from gateway.context import Decision, Principal
from gateway.identity.identifier import JwtIdentifier
from tests.approvals.conftest import Clock, StoreKit, draft
from tests.support.servers import run_aiohttp
from tests.support.tokens import TestIssuer

AUDIENCE = "http://approvals.test/mcp"


def _only_docs(approver: Principal, approval: Approval) -> Decision:  # sees the "docs" tool's calls only
    return Decision("allow" if approval.tool == "docs" else "deny", ("docs-team",))


@asynccontextmanager
async def _gateways(stores: list[Any], tmp_path: Any,
                    check: Callable[[Principal, Approval], Decision] = _only_docs) -> AsyncIterator[
                        tuple[list[str], dict[str, str]]]:
    """One approvals API per store (the same issuer), and an approver's bearer header."""
    issuer = TestIssuer(tmp_path)
    identifier = JwtIdentifier(IdentityConfig(mode="jwt", issuers=(IssuerConfig(**issuer.config(audience=AUDIENCE)),)),
                               {}, "http://approvals.test", None)
    await identifier.start()
    try:
        async with AsyncExitStack() as stack:
            urls = []
            for store in stores:
                app = web.Application()
                app.add_routes(approval_routes(store, identifier, check))
                urls.append((await stack.enter_async_context(run_aiohttp(app))).rstrip("/"))
            yield urls, {"Authorization": f"Bearer {issuer.mint('dora', aud=AUDIENCE)}"}
    finally:
        await identifier.close()


async def _get(http: aiohttp.ClientSession, url: str, query: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.get(f"{url}/api/approvals?{query}", headers=headers) as resp:
        return resp.status, await resp.json()


def _readable_forms(text: str) -> list[bytes]:
    """The cursor text and every byte string a client could decode it to."""
    forms = [text.encode()]
    text = text.removeprefix(PREFIX)
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            forms.append(decode(padded))
        except (binascii.Error, ValueError):
            pass
    return forms


def _traces(item: Approval) -> list[bytes]:
    """What would give the item away: its id (whole or its hex part) and its times as text or as doubles."""
    found = [item.id.encode(), item.id.removeprefix("apr_").encode()]
    for t in (item.created_at, item.expires_at):
        found += [repr(t).encode(), str(int(t)).encode(), struct.pack(">d", t), struct.pack("<d", t)]
    return found


def _assert_names_nothing(cursor: str, items: list[Approval]) -> None:
    for form in _readable_forms(cursor):
        for item in items:
            for trace in _traces(item):
                assert trace not in form, (item.id, trace)


async def test_a_cursor_on_a_hidden_item_names_neither_its_id_nor_its_times(kit: StoreKit, tmp_path: Any) -> None:
    store = await kit.make()
    clock = Clock()
    made: list[Approval] = []
    mine, _ = await store.create_or_join(draft(clock, {"n": 0}, tool="docs"), link_s=1800)
    for _ in range(PAGE_PAST := 1005):  # hidden from the approver: one answer looks at 1,001 and ends on a hidden one
        clock.advance(0.001)
        item, _ = await store.create_or_join(draft(clock, {"other": clock.now}), link_s=1800)
        made.append(item)
    assert PAGE_PAST > LIST_WINDOW
    async with _gateways([store], tmp_path) as (urls, headers), aiohttp.ClientSession() as http:
        status, body = await _get(http, urls[0], "limit=1", headers)
        assert status == 200 and body["items"] == [] and "next_cursor" in body
        _assert_names_nothing(body["next_cursor"], [*made, mine])
        status, body = await _get(http, urls[0], f"limit=1&cursor={body['next_cursor']}", headers)
        assert status == 200 and [i["id"] for i in body["items"]] == [mine.id]


async def test_a_cursor_on_an_item_of_another_state_names_nothing_of_it(kit: StoreKit, tmp_path: Any) -> None:
    store = await kit.make()
    clock = Clock()
    made: list[Approval] = []
    for n in range(LIST_WINDOW + 2):  # pending, newer than the one denied call: a denied page ends on a pending one
        clock.advance(0.001)
        item, _ = await store.create_or_join(draft(clock, {"n": n}, tool="docs"), link_s=1800)
        made.append(item)
    await store.decide(made[0].id, "alice", "denied", None)
    async with _gateways([store], tmp_path) as (urls, headers), aiohttp.ClientSession() as http:
        status, body = await _get(http, urls[0], "state=denied&limit=5", headers)
        assert status == 200 and body["items"] == [] and "next_cursor" in body
        _assert_names_nothing(body["next_cursor"], made)


async def _walk(http: aiohttp.ClientSession, urls: list[str], headers: dict[str, str]) -> list[str]:
    """The pending items' ids, two a page, each page asked of the next replica in turn with the last page's cursor."""
    walked: list[str] = []
    query = "limit=2"
    for turn in range(10):
        status, body = await _get(http, urls[turn % len(urls)], query, headers)
        assert status == 200, body
        walked += [i["id"] for i in body["items"]]
        if "next_cursor" not in body:
            break
        query = f"limit=2&cursor={body['next_cursor']}"
    return walked


async def _five_items(store: Any) -> list[str]:
    """Five pending items on `store`, a millisecond apart (the listing's order), their ids oldest first."""
    clock = Clock()
    ids = []
    for n in range(5):
        clock.advance(0.001)
        item, _ = await store.create_or_join(draft(clock, {"n": n}, tool="docs"), link_s=1800)
        ids.append(item.id)
    return ids


@pytest.mark.parametrize("kit", ["redis"], indirect=True)  # Redis only: replicas, index entries
async def test_a_cursor_from_one_replica_works_on_another(kit: StoreKit, tmp_path: Any) -> None:
    assert kit.redis is not None
    first, second = await kit.make(), await kit.make()  # two store instances: each reads the shared key itself
    ids = await _five_items(first)
    async with _gateways([first, second], tmp_path) as (urls, headers), aiohttp.ClientSession() as http:
        assert await _walk(http, urls, headers) == ids[::-1]


def _flip(text: str, at: int) -> str:
    text = text.removeprefix(PREFIX)
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[at % len(raw)] ^= 0x01
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def test_a_tampered_or_forged_cursor_is_400(kit: StoreKit, tmp_path: Any) -> None:
    store = await kit.make()
    clock = Clock()
    for n in range(4):
        clock.advance(0.001)
        await store.create_or_join(draft(clock, {"n": n}, tool="docs"), link_s=1800)
    async with _gateways([store], tmp_path) as (urls, headers), aiohttp.ClientSession() as http:
        status, body = await _get(http, urls[0], "limit=1", headers)
        cursor = body["next_cursor"]
        assert (await _get(http, urls[0], f"limit=1&cursor={cursor}", headers))[0] == 200
        # The plain cursor the gateway used to write, naming a real position, is no longer accepted.
        item = (await store.list(None, 4))[0]
        plain = base64.urlsafe_b64encode(
            f'[1,"created",{item.created_at!r},"{item.id}"]'.encode()).decode().rstrip("=")
        sealed = cursor.removeprefix(PREFIX)
        raw_len = len(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
        zeros = base64.urlsafe_b64encode(b"\0" * raw_len).decode().rstrip("=")
        for bad in (_flip(cursor, 0), _flip(cursor, 13), _flip(cursor, -1), cursor[:-2], plain, PREFIX + plain,
                    zeros, PREFIX + zeros):
            status, body = await _get(http, urls[0], f"limit=1&cursor={bad}", headers)
            assert status == 400 and body["error"]["reason"] == "invalid_cursor", (bad, body)


@pytest.mark.parametrize("kit", ["redis"], indirect=True)  # Redis only: replicas sharing one key
async def test_replicas_agree_on_the_cursor_key_after_it_is_deleted(kit: StoreKit, tmp_path: Any) -> None:
    """The key was read from Redis once and kept: after `<prefix>approvals:cursor_key` was deleted (as the docs
    say to rotate it) or lost (Redis restarted without persistence), a replica that had read it went on sealing with
    the old key while one that had not made a new one, so a walk across the two failed with 400 for good."""
    assert kit.redis is not None
    first, second = await kit.make(), await kit.make()
    ids = await _five_items(first)
    async with _gateways([first, second], tmp_path) as (urls, headers), aiohttp.ClientSession() as http:
        status, body = await _get(http, urls[0], "limit=2", headers)  # the first replica has used the key
        assert status == 200 and "next_cursor" in body
        client = aioredis.from_url(kit.redis.url)
        try:
            assert await client.delete("t:approvals:cursor_key") == 1
        finally:
            await client.aclose()
        assert await _walk(http, urls[::-1], headers) == ids[::-1]  # the second replica first
