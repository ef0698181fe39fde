"""Approver tokens signed out of the approvers' page: refused by the page and the API until they lapse.

The session cookie is the approver's own token, which verifies on any replica until its `exp`: clearing the
cookie does not stop a copy of it (a proxy log, another machine's jar). A sign-out therefore records the token's
digest (never the token; of a JWT, of its signed part: token_key) until the token could no longer verify anyway,
so every record ends by itself. In memory on one replica, or in Redis (`<prefix>approvals:signedout:<sha256>`) so
that every replica refuses it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.errors import GatewayError

log = logging.getLogger("customs.approvals.signouts")
MAX_SKEW_S = 600  # identity.clock_skew_s at most: a token verifies until its exp plus the issuer's skew
MAX_KEPT = 10_000  # records one replica keeps in memory
_TRANSIENT = (RedisError, OSError, TimeoutError)


def token_key(token: str) -> str:
    """What is kept of a signed-out token: its digest, as the live-update streams name their sessions.

    Of a JWT only the signed part (`header.payload`) is digested: the signature segment is not signed itself and
    has other spellings that verify alike (trailing `=` padding), each of which would otherwise be a token never
    signed out. Header and payload cannot be respelled without breaking the signature."""
    head, dot, _signature = token.rpartition(".")
    return hashlib.sha256((head if dot and head.count(".") == 1 else token).encode()).hexdigest()


class SignOuts(Protocol):
    async def sign_out(self, key: str, until: float) -> None:
        """Refuse the token of digest `key` until `until` (epoch seconds)."""

    async def signed_out(self, key: str) -> bool:
        """Whether the token of digest `key` was signed out; raises GatewayError when that cannot be known."""


class MemorySignOuts:
    """One replica's sign-outs, at most `max_kept`: when full, the record whose token lapses soonest makes room.

    Only a token that passes the sign-in check can be signed out (ApproverAuth.sign_out: it verifies, and is of
    `approvals.approvers_issuer` when that is set). That check is all the page asks of an approver, so without
    `approvers_issuer` an agent's token passes too, and an agent holding many valid tokens can fill this and push
    an approver's sign-out out early (logged); with it, filling this takes that many tokens of the approvers'
    issuer."""

    def __init__(self, *, max_kept: int = MAX_KEPT, clock: Callable[[], float] = time.time) -> None:
        self._until: dict[str, float] = {}
        self._max_kept = max_kept
        self._clock = clock

    def __len__(self) -> int:
        return len(self._until)

    async def sign_out(self, key: str, until: float) -> None:
        self.record(key, until)

    def record(self, key: str, until: float) -> None:
        if key not in self._until and len(self._until) >= self._max_kept:
            now = self._clock()
            self._until = {k: u for k, u in self._until.items() if u > now}
            if len(self._until) >= self._max_kept:
                soonest = min(self._until, key=self._until.__getitem__)
                log.warning("%d approver sign-outs kept: the one lapsing soonest is forgotten early", self._max_kept)
                del self._until[soonest]
        self._until[key] = max(until, self._until.get(key, -math.inf))

    async def signed_out(self, key: str) -> bool:
        return self.holds(key)

    def holds(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]  # the token no longer verifies: nothing left to refuse
            return False
        return True


class RedisSignOuts:
    """Sign-outs every replica sees. This replica also keeps its own in memory, so a sign-out made while Redis
    is unreachable still holds here (other replicas cannot hear of it: logged); a check Redis cannot answer
    fails closed (GatewayError `approval_unavailable`), as every approver request needing the store does."""

    def __init__(self, client: Any, prefix: str = "customs:", *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = f"{prefix}approvals:signedout:"
        self._clock = clock
        self._local = MemorySignOuts(clock=clock)

    async def sign_out(self, key: str, until: float) -> None:
        self._local.record(key, until)
        ttl = math.ceil(until - self._clock())
        if ttl <= 0:
            return
        try:
            await self._client.set(self._prefix + key, b"1", ex=ttl)
        except _TRANSIENT as exc:
            log.warning("approver sign-out not shared with other replicas (redis: %s): they accept the session "
                        "until its token expires", type(exc).__name__)

    async def signed_out(self, key: str) -> bool:
        if self._local.holds(key):
            return True
        try:
            return bool(await self._client.exists(self._prefix + key))
        except _TRANSIENT as exc:
            raise GatewayError("approval_unavailable", "the approval store is unavailable; whether this session "
                               "was signed out cannot be checked", data={"detail": type(exc).__name__}) from exc
