"""Per-call upstream timeouts, watched by one timer per upstream instead of one timer per call.

`asyncio.timeout` puts a timer handle in the event loop's heap for every call, orders it against the others
(a Python `__lt__` per comparison) and takes it out again: about fifteen Python calls a proxied call, most of
them the loop's. Here a call's deadline is an entry in a dict, and one sweep every `resolution_s`, armed only
while calls are in flight, cancels the calls past theirs. A timeout therefore fires up to `resolution_s`
late; upstream timeouts are seconds, so 50 ms does not matter. The block behaves as `asyncio.timeout` does:
an expired block raises `TimeoutError` (from the `CancelledError` it delivered), a cancellation from
elsewhere stays a `CancelledError`, and `expired()` tells the two apart. Where a step inside the block is
bounded by the same limit (a stdio child's write), use `asyncio.timeout`: the block's timeout must come first.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

RESOLUTION_S = 0.05


class Deadlines:
    """The calls in flight to one upstream and when each must have finished."""

    __slots__ = ("_calls", "_loop", "_resolution_s", "_timer")

    def __init__(self, resolution_s: float = RESOLUTION_S) -> None:
        self._calls: dict[Deadline, float] = {}
        self._resolution_s = resolution_s
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the sweep is armed on

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = [d for d, when in self._calls.items() if when <= now]
        for deadline in due:
            del self._calls[deadline]
            deadline._expire()
        # Re-armed while calls remain: an idle upstream keeps no timer.
        self._timer = loop.call_at(now + self._resolution_s, self._sweep, loop) if self._calls else None


class Deadline:
    """One block under a deadline, as `asyncio.timeout(seconds)` would guard it: `async with Deadline(owner, s)`.

    (It adds itself to its owner's calls and takes itself out in its own methods: a helper method more on the
    owner is a Python call more per call, and saving those is this module's point.)"""

    __slots__ = ("_cancelling", "_expired", "_owner", "_seconds", "_task")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def expired(self) -> bool:
        """True when the deadline passed and the block was cancelled for it."""
        return self._expired

    def _expire(self) -> None:
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline must be used inside a task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        owner = self._owner
        owner._calls[self] = loop.time() + self._seconds
        # (A sweep armed on another loop, one closed with calls in flight, would never run again.)
        if owner._timer is None or owner._loop is not loop:
            owner._loop = loop
            owner._timer = loop.call_at(loop.time() + owner._resolution_s, owner._sweep, loop)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self._expired:
            self._owner._calls.pop(self, None)
            return
        assert self._task is not None
        # Ours was the cancellation (the task's count back to where it was): the block timed out. One from
        # elsewhere as well stays a cancellation, as asyncio.timeout decides.
        if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from exc
