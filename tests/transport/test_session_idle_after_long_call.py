"""Idle expiry counts from a session's last activity, a call that just ended included: a session whose one call
ran longer than the idle window (a tool held for approval for minutes, say) is not ended the moment that call is
answered, before its client could send the next request; it expires a whole window after the call ended."""

from __future__ import annotations

import time

import pytest

from gateway.catalog import Catalog
from gateway.context import Principal
from gateway.sessions import SessionManager
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
AGENT = Principal(id="agent", issuer="i", subject="agent")
IDLE_S = 2.0  # the sweep looks every IDLE_S / 4


class Call:
    """A call in flight on a session, as the HTTP edge registers it."""

    def cancel(self) -> None:
        raise AssertionError("the call was cancelled")


async def test_a_session_is_not_ended_right_after_a_call_longer_than_the_idle_window() -> None:
    manager = SessionManager({}, Catalog(()), idle_s=IDLE_S)
    session = manager.create(AGENT, None, "2025-11-25", None, None)
    session.inflight[1] = Call()  # its request arrived (get() touched the session) ...
    began = time.monotonic()
    await manager.start()
    try:
        # ... and runs longer than the idle window (the clock passing is what is tested, not an ordering)
        await eventually(lambda: time.monotonic() - began > IDLE_S * 1.2, within=10)
        del session.inflight[1]  # answered
        answered = time.monotonic()
        await eventually(lambda: time.monotonic() - answered > IDLE_S * 0.4, within=10)
        # (on the old code the next sweep, within IDLE_S / 4, ended it: idle since its call began)
        assert not session.closed
        await eventually(lambda: session.closed, within=10)  # idle since the call ended: it does expire
    finally:
        await manager.close()
