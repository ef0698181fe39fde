"""Idle expiry: the sweep ends idle sessions several at a time, and only those still idle at their turn.

Ending a session awaits its upstreams and its end hook (credential revocation), so one pass over
many idle sessions takes a while. It used to end them one after another, so a steady flood of
abandoned sessions outran it; it now ends up to `end_concurrency` at once. A call arriving meanwhile
on a session the pass listed as idle used to be cancelled when the pass reached that session; each
session is still asked again (idle, nothing in flight) when a worker takes it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.catalog import Catalog
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.sessions import Session, SessionManager
from tests.hardening.conftest import poll

pytestmark = pytest.mark.asyncio
AGENT = Principal(id="agent", issuer="i", subject="agent")


class Call:
    """A call in flight on a session, as the HTTP edge registers it."""

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def idle_sessions(manager: SessionManager, count: int) -> list[Session]:
    sessions = [manager.create(AGENT, None, "2025-11-25", None, None) for _ in range(count)]
    for session in sessions:
        session.last_used = time.monotonic() - 60  # long idle: all of them are in the same pass
    return sessions


async def test_a_call_arriving_while_the_sweep_ends_other_sessions_is_not_cancelled() -> None:
    ending: list[Session] = []
    slow_may_end = asyncio.Event()

    async def on_end(session: Session) -> None:
        ending.append(session)
        if len(ending) <= 2:
            await slow_may_end.wait()  # the first two ends are slow (their upstreams, their revocation)

    # Two workers: both are busy with the slow sessions when the call arrives on the third.
    manager = SessionManager({}, Catalog(()), idle_s=0.2, on_end=on_end, end_concurrency=2)
    first, second, busy, last = idle_sessions(manager, 4)
    await manager.start()
    try:
        await poll(lambda: ending == [first, second], what="the sweep to start ending the first two sessions")
        call = Call()
        manager.get(busy.id, AGENT, None).inflight[1] = call  # a call arrives on `busy` during the pass
        slow_may_end.set()
        await poll(lambda: last in ending, what="the pass to reach the last session")
        assert not busy.closed and not call.cancelled
        assert manager.get(busy.id, AGENT, None) is busy
    finally:
        await manager.close()


async def test_the_sweep_ends_idle_sessions_concurrently_up_to_its_bound() -> None:
    ending = 0
    most = 0
    release = asyncio.Event()

    async def on_end(session: Session) -> None:
        nonlocal ending, most
        ending += 1
        most = max(most, ending)
        await release.wait()  # every end is slow until released: the workers all wait here together
        ending -= 1

    manager = SessionManager({}, Catalog(()), idle_s=0.2, on_end=on_end, end_concurrency=4)
    sessions = idle_sessions(manager, 12)
    await manager.start()
    try:
        await poll(lambda: ending == 4, what="four sessions ending at once")
        release.set()
        await poll(lambda: all(s.closed for s in sessions) and ending == 0, what="every idle session ended")
        assert most == 4  # never more at once than the bound
        assert len(manager) == 0 and manager.open_counts() == {"stateful": 0, "stateless": 0}
    finally:
        await manager.close()


async def test_ended_sessions_give_their_principals_place_back() -> None:
    manager = SessionManager({}, Catalog(()), max_sessions=3, max_per_principal=2)
    other = Principal(id="other", issuer="i", subject="other")
    first, _ = (manager.create(AGENT, None, "2025-11-25", None, None) for _ in range(2))
    with pytest.raises(GatewayError, match="rate_limited") as refused:
        manager.create(AGENT, None, "2025-11-25", None, None)
    assert refused.value.data["limit"] == "sessions_per_principal"
    manager.stateless(other, None, "2026-07-28", None)  # the implicit stateless session counts against no cap
    manager.create(other, None, "2025-11-25", None, None)
    with pytest.raises(GatewayError, match="rate_limited") as refused:
        manager.create(other, None, "2025-11-25", None, None)
    assert refused.value.data["limit"] == "sessions"
    await manager.end(first)
    await manager.end(first)  # ending twice frees one place, not two
    manager.create(AGENT, None, "2025-11-25", None, None)
    with pytest.raises(GatewayError, match="rate_limited"):
        manager.create(AGENT, None, "2025-11-25", None, None)
    assert manager.open_counts() == {"stateful": 3, "stateless": 1}
    await manager.close()
