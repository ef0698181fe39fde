"""Listing cursors: an opaque text naming a position (keyset) in a store's newest-first index of approvals.

A position is (score, id) in one of two orders: `created` (created_at: every listing but one) and `expiry`
(expires_at: `state=pending` alone, which the stores index by expiry; with one `approvals.ttl_s` that is creation
order too). A page holds the items strictly after the position, so items created meanwhile (ahead of it) or gone
(behind it) never shift a walk: no duplicate, no gap.

The text is `c.` and base64url of nonce + AES-GCM(`[1, order, score, id]`) under the store's cursor key (a random
one per process for the memory store, one shared through Redis by every replica of a Redis store: shared_key). Sealed
because a page's position can be an item the approver may not see (hidden by policy, another state): its id and
times must not be readable, and a cursor nobody was given (forged, altered) must not name a position. It is no
grant: every item is still checked against who may see it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.approvals.model import Approval

CREATED: Final = "created"
EXPIRY: Final = "expiry"
VERSION: Final = 1
MAX_TEXT: Final = 512  # far above any cursor made here: a longer text is refused before it is decoded
KEY_BYTES: Final = 32  # AES-256-GCM
_NONCE: Final = 12
_AAD: Final = b"customs approvals cursor"  # binds the key's use to cursors alone
# Before the base64url: one cursor in 64 began with '-', which a command line reads as an option
# (`customs approvals list --cursor -x...`: "expected one argument"). '.' is no base64url character.
PREFIX: Final = "c."
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


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


async def shared_key(client: Any, name: str) -> bytes:
    """The cursor key every replica using Redis `client` agrees on: the first to ask creates it (SET NX, no
    expiry), all read it. Hex, so a client decoding replies to str reads it alike."""
    value = await client.get(name)  # one round trip a listing once the key exists
    while value is None:  # (again if it is deleted between the two)
        await client.set(name, new_key().hex(), nx=True)
        value = await client.get(name)
    text = value.decode() if isinstance(value, bytes) else str(value)
    key = bytes.fromhex(text)
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name} holds no {KEY_BYTES}-byte key")
    return key


def encode(cursor: Cursor, key: bytes) -> str:
    # repr-exact floats through JSON: the score must compare equal to the index's own after the round trip.
    raw = json.dumps([VERSION, cursor.order, cursor.score, cursor.id], separators=(",", ":")).encode()
    nonce = secrets.token_bytes(_NONCE)  # random: 2^32 cursors a key stay far from a nonce collision
    return PREFIX + base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, raw, _AAD)).decode().rstrip("=")


_UNREADABLE: Final = "cursor is not one this gateway made: pass next_cursor as it was given"
_OTHER: Final = "cursor belongs to a listing with another state filter: use it with the same `state`"


def decode(text: str, order: str, key: bytes) -> Cursor:
    """The position `text` names, for a listing in `order`; InvalidCursor if it is none (not sealed under `key`:
    forged, altered, another store's) or another listing's."""
    if not text or len(text) > MAX_TEXT or not text.isascii():
        raise InvalidCursor(_UNREADABLE)
    text = text.removeprefix(PREFIX)  # (none on cursors of replicas from before the prefix: still read)
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        raw = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _AAD)
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError, InvalidTag):
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
