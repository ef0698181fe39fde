"""Pages of the Redis approval store's listing: a keyset walk down one of its sorted sets, newest first.

The store indexes every item in `<prefix>approvals:all` (score created_at) and pending ones in `...:pending`
(score expires_at); a page reads the entries strictly after its cursor, (score, id), with ZREVRANGEBYSCORE, so it
costs O(log n + what it reads) wherever the walk is, and items created meanwhile (newer) never shift it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.approvals.cursor import Cursor
from gateway.approvals.model import Approval
from gateway.approvals.store import Page

Run = Callable[[Awaitable[Any]], Awaitable[Any]]
Load = Callable[[Sequence[str]], Awaitable[Mapping[str, Approval]]]
BATCH = 200


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def entries_after(client: Any, run: Run, index: str, order: str, after: Cursor | None,
                        n: int) -> tuple[list[Cursor], bool]:
    """Up to `n` entries of `index` strictly after `after`, newest first (plus any that tie with it on its score),
    and whether the index ends with them."""
    pipe = client.pipeline(transaction=False)
    if after is None:
        pipe.zrevrangebyscore(index, "+inf", "-inf", start=0, num=n, withscores=True)
    else:
        score = repr(after.score)  # repr: the exact double (Redis reads it back as the same number)
        # Entries on the cursor's own score come in descending id order, as the keyset wants: those below its id.
        # Many share a score only under a test's frozen clock (created_at is time.time()).
        pipe.zrevrangebyscore(index, score, score, withscores=True)
        pipe.zrevrangebyscore(index, "(" + score, "-inf", start=0, num=n, withscores=True)
    replies = await run(pipe.execute())
    rest = [(_text(m), float(s)) for m, s in replies[-1]]
    ties = [] if after is None else [(m, s) for m, s in ((_text(m), float(s)) for m, s in replies[0]) if m < after.id]
    return [Cursor(order, s, m) for m, s in (*ties, *rest)], len(rest) < n


async def walk_page(client: Any, run: Run, load: Load, index: str, order: str, states: Sequence[str] | None,
                    limit: int, after: Cursor | None, window: int | None) -> Page:
    """Up to `limit` items in `states` (None: any) after `after`, looking through at most `window` items (None: to
    the end); the page's `next` is the last entry looked at, unless the index ends there."""
    found: list[Approval] = []
    seen = 0
    cursor = after
    while True:
        batch = BATCH if window is None else max(1, min(BATCH, window - seen))
        entries, exhausted = await entries_after(client, run, index, order, cursor, batch)
        if not entries:
            return Page(found, None)
        items = await load([e.id for e in entries])
        for n, entry in enumerate(entries):
            cursor = entry
            item = items.get(entry.id)
            if item is None:  # aged out of history (`load` drops its entry): not counted, as not listed
                continue
            seen += 1
            if states is None or item.state in states:
                found.append(item)
            if len(found) >= limit or (window is not None and seen >= window):
                more = n + 1 < len(entries) or (
                    not exhausted and bool((await entries_after(client, run, index, order, cursor, 1))[0]))
                return Page(found, cursor if more else None)
        if exhausted:
            return Page(found, None)
