"""Per-call upstream timeouts watched by one sweep (gateway/transport/deadlines.py), checked against what
`asyncio.timeout` does in each case: a block past its deadline raises TimeoutError, a cancellation from
elsewhere stays a cancellation, and nothing is left behind once the calls are over."""

from __future__ import annotations

import asyncio

import pytest

from gateway.transport.deadlines import Deadline, Deadlines


async def _until(check: object, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    owner = Deadlines(resolution_s=0.01)
    deadline = Deadline(owner, 0.02)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.Event().wait()
    assert deadline.expired()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # its cancellation was taken back


async def test_a_block_done_in_time_leaves_nothing_behind() -> None:
    owner = Deadlines(resolution_s=0.01)
    async with Deadline(owner, 30) as deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()
    assert not owner._calls
    await _until(lambda: owner._timer is None)  # the sweep stops once no call is left


async def test_only_the_calls_past_their_deadline_are_cancelled() -> None:
    owner = Deadlines(resolution_s=0.01)
    release = asyncio.Event()

    async def call(seconds: float) -> str:
        try:
            async with Deadline(owner, seconds):
                await release.wait()
        except TimeoutError:
            return "timeout"
        return "done"

    short = [asyncio.create_task(call(0.02)) for _ in range(5)]
    long = [asyncio.create_task(call(60)) for _ in range(5)]
    assert await asyncio.gather(*short) == ["timeout"] * 5
    release.set()
    assert await asyncio.gather(*long) == ["done"] * 5
    assert not owner._calls


async def _held(deadline: Deadline) -> asyncio.Task[None]:
    """A task inside `deadline`'s block, waiting for nothing that comes."""
    entered = asyncio.Event()

    async def call() -> None:
        async with deadline:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await entered.wait()
    return task


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    owner = Deadlines(resolution_s=0.01)
    deadline = Deadline(owner, 60)
    task = await _held(deadline)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline.expired() and not owner._calls


async def test_a_cancellation_from_elsewhere_as_the_deadline_passes_stays_a_cancellation() -> None:
    owner = Deadlines(resolution_s=60)  # swept by hand below, at the moment chosen
    deadline = Deadline(owner, 0)
    task = await _held(deadline)
    owner._sweep(asyncio.get_running_loop())  # its deadline passed: the sweep cancels it
    assert deadline.expired()
    task.cancel()  # and so does someone else before it runs again: as asyncio.timeout, not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_raised_inside_passes_through() -> None:
    owner = Deadlines(resolution_s=0.01)
    with pytest.raises(KeyError):
        async with Deadline(owner, 60):
            raise KeyError("x")
    assert not owner._calls


async def test_outside_a_task_it_refuses_clearly() -> None:
    owner = Deadlines()
    loop = asyncio.get_running_loop()
    raised: asyncio.Future[BaseException | None] = loop.create_future()

    async def enter() -> None:
        async with Deadline(owner, 1):
            pass

    def in_a_callback() -> None:  # no task is current in a plain callback
        coro = enter()
        try:
            coro.send(None)
        except BaseException as exc:
            raised.set_result(exc)
        else:
            raised.set_result(None)
        coro.close()

    loop.call_soon(in_a_callback)
    error = await asyncio.wait_for(raised, 10)
    assert isinstance(error, RuntimeError) and "inside a task" in str(error)


def test_an_owner_used_again_on_a_new_loop_still_times_out() -> None:
    """A loop closed with a call in flight leaves its sweep armed there for good: the next loop arms its own."""
    owner = Deadlines(resolution_s=0.01)

    async def left_in_flight() -> None:
        async with Deadline(owner, 60):
            await asyncio.sleep(0)  # the loop ends around here: the block's sweep stays armed on it

    async def timed_out() -> bool:
        deadline = Deadline(owner, 0.02)
        try:
            async with deadline:
                await asyncio.wait_for(asyncio.Event().wait(), 5)  # (the test's own bound: not the deadline)
        except TimeoutError:
            pass
        return deadline.expired()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(left_in_flight())
    finally:
        loop.close()
    assert owner._timer is not None  # armed on the closed loop
    assert asyncio.run(timed_out())
