"""Idle expiry: the sweep ends only sessions still idle when their turn comes.

Ending a session awaits its upstreams and its end hook (credential revocation), so one pass over
many idle sessions takes a while; a call arriving meanwhile on a session the pass listed as idle
used to be cancelled when the pass reached that session.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.catalog import Catalog
from gateway.context import Principal
from gateway.sessions import Session, SessionManager
from tests.hardening.conftest import poll

pytestmark = pytest.mark.asyncio
AGENT = Principal(id="agent", issuer="i", subject="agent")


class Call:
    """A call in flight on a session, as the HTTP edge registers it."""

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def test_a_call_arriving_while_the_sweep_ends_other_sessions_is_not_cancelled() -> None:
    ending: list[Session] = []
    first_may_end = asyncio.Event()

    async def on_end(session: Session) -> None:
        ending.append(session)
        if len(ending) == 1:
            await first_may_end.wait()  # the first session's end is slow (its upstream, its revocation)

    manager = SessionManager({}, Catalog(()), idle_s=0.2, on_end=on_end)
    first, busy, last = (manager.create(AGENT, None, "2025-11-25", None, None) for _ in range(3))
    for session in (first, busy, last):
        session.last_used = time.monotonic() - 60  # long idle: all three are in the same pass
    await manager.start()
    try:
        await poll(lambda: ending == [first], what="the sweep to start ending the first session")
        call = Call()
        manager.get(busy.id, AGENT, None).inflight[1] = call  # a call arrives on `busy` during the pass
        first_may_end.set()
        await poll(lambda: last in ending, what="the pass to reach the last session")
        assert not busy.closed and not call.cancelled
        assert manager.get(busy.id, AGENT, None) is busy
    finally:
        await manager.close()
