"""Listing cursors: an opaque text naming a position (keyset) in a store's newest-first index of approvals.

A position is (score, id) in one of two orders: `created` (created_at: every listing but one) and `expiry`
(expires_at: `state=pending` alone, which the stores index by expiry; with one `approvals.ttl_s` that is creation
order too). A page holds the items strictly after the position, so items created meanwhile (ahead of it) or gone
(behind it) never shift a walk: no duplicate, no gap. The text is base64url of `[1, order, score, id]`; it is a
position, not a secret or a grant (every item is still checked against who may see it).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.approvals.model import Approval

CREATED: Final = "created"
EXPIRY: Final = "expiry"
VERSION: Final = 1
MAX_TEXT: Final = 512  # far above any cursor made here: a longer text is refused before it is decoded
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # an approval id (apr_<hex>), ASCII so both stores order it alike


class InvalidCursor(ValueError):
    """A cursor text this gateway did not make, or one of another listing (the message says which)."""


@dataclass(frozen=True)
class Cursor:
    """A position in the `order` index: the next page starts strictly after (score, id), newest first."""

    order: str
    score: float
    id: str

    @property
    def key(self) -> tuple[float, str]:
        return (self.score, self.id)


def order_for(states: Sequence[str] | None) -> str:
    """The index a listing walks: `expiry` for `pending` alone (the stores' pending index), else `created`."""
    return EXPIRY if states is not None and set(states) == {"pending"} else CREATED


def position(item: Approval, order: str) -> Cursor:
    """The position of `item` in the `order` index: a page that ends on it continues after it."""
    return Cursor(order, item.expires_at if order == EXPIRY else item.created_at, item.id)


def encode(cursor: Cursor) -> str:
    # repr-exact floats through JSON: the score must compare equal to the index's own after the round trip.
    raw = json.dumps([VERSION, cursor.order, cursor.score, cursor.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_UNREADABLE: Final = "cursor is not one this gateway made: pass next_cursor as it was given"
_OTHER: Final = "cursor belongs to a listing with another state filter: use it with the same `state`"


def decode(text: str, order: str) -> Cursor:
    """The position `text` names, for a listing in `order`; InvalidCursor if it is none (or another listing's)."""
    if not text or len(text) > MAX_TEXT or not text.isascii():
        raise InvalidCursor(_UNREADABLE)
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidCursor(_UNREADABLE) from None
    if not _well_formed(value):
        raise InvalidCursor(_UNREADABLE)
    if value[1] != order:
        raise InvalidCursor(_OTHER)
    return Cursor(value[1], float(value[2]), value[3])


def _well_formed(value: object) -> bool:
    """`[1, order, score, id]`: a finite number (no bool, no NaN) and an id as the stores make them."""
    if not (isinstance(value, list) and len(value) == 4):
        return False
    version, order, score, item_id = value
    return (type(version) is int and version == VERSION and order in (CREATED, EXPIRY)
            and type(score) in (int, float) and math.isfinite(score)
            and isinstance(item_id, str) and _ID.fullmatch(item_id) is not None)


def check(after: Cursor | None, order: str) -> None:
    """A store's guard: a position in another index than the listing walks is no position in it."""
    if after is not None and after.order != order:
        raise InvalidCursor(_OTHER)
