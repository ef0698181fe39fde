"""The fence pings of a shared stdio child (real child processes): however many calls are given up
on, one ping is outstanding at a time and its answer clears them all; a child that answers no ping
for a bounded time is restarted as stuck instead of keeping every given-up call live forever."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.stdio import StdioUpstream
from gateway.transport.stdio_fence import STUCK_AFTER
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually, frozen, text_of
from tests.transport.watch_server import WATCH_SERVER_PATH

# Answers initialize, then reads (so its stdin never fills) and answers nothing, not even ping.
MUTE_SERVER = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    req = json.loads(line)\n"
    "    if req.get('method') == 'initialize':\n"
    "        print(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'result': {'protocolVersion': '2025-11-25',"
    " 'capabilities': {'tools': {}}, 'serverInfo': {'name': 'mute', 'version': '1'}}}), flush=True)\n")


async def test_given_up_calls_share_one_fence_and_a_mute_child_is_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "customs.upstream.mute")
    restarted = asyncio.Event()
    timeout_s = 0.5
    upstream = StdioUpstream(UpstreamConfig(name="mute", command=(sys.executable, "-c", MUTE_SERVER),
                                            timeout_s=timeout_s),
                             restart_cap_s=0.05, on_restart=lambda name: restarted.set())
    await upstream.start()
    # connect() waits for the child only timeout_s (kept short for the timeouts tested): a loaded
    # machine can take longer to start a Python child, so wait for it to be up first.
    await eventually(lambda: upstream.health().ready, within=30)
    try:
        view = await upstream.connect(CLIENT_CAPS, Inbox())
        first_pid = upstream.pid
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(view.request(call("anything", request_id=i)) for i in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, GatewayError) and r.reason == "upstream_timeout" for r in results), results
        # 20 tombstones and at most one fence ping, waited on by one task (on the old code: 20 tasks, 40 entries).
        assert len(upstream._tasks) <= 1
        assert len(upstream._table) <= 21

        # Cancelled calls join the same fence (their cancel-then-fence task ends once the cancel is written).
        cancelled = [asyncio.create_task(view.request(call("anything", request_id=f"c{i}"), timeout=30))
                     for i in range(5)]
        await eventually(lambda: len(upstream._table) >= 25, within=5)
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        await eventually(lambda: len(upstream._tasks) <= 1, within=5)
        assert not restarted.is_set()

        # No ping answered for STUCK_AFTER x timeout_s: the child is restarted (on the old code: never).
        await asyncio.wait_for(restarted.wait(), timeout=10 + STUCK_AFTER * timeout_s)
        assert loop.time() - started >= STUCK_AFTER * timeout_s
        assert upstream.health().restarts == 1
        assert any("restarting it as stuck" in r.getMessage() for r in caplog.records)
        await eventually(lambda: upstream.health().ready and upstream.pid not in (None, first_pid), within=10)
        assert len(upstream._table) == 0  # the restart took every tombstone with it
        await eventually(lambda: not upstream._tasks, within=5)
    finally:
        await upstream.stop()


async def test_one_answered_fence_ping_clears_every_given_up_call() -> None:
    restarts: list[str] = []
    # The calls give up after 1 s; the fence's ping is given timeout_s, and STUCK_AFTER x timeout_s before the child
    # counts as stuck: far more than a child continued after its calls timed out needs to answer, however loaded.
    upstream = StdioUpstream(UpstreamConfig(name="watch", command=(sys.executable, WATCH_SERVER_PATH), timeout_s=10),
                             on_restart=restarts.append)
    await upstream.start()
    await eventually(lambda: upstream.health().ready, within=30)
    # Only restarts from here on would mean the fence did not clear the given-up calls.
    restarted_before, restarts_before, pid = len(restarts), upstream.health().restarts, upstream.pid
    try:
        inbox = Inbox()
        view = await upstream.connect(CLIENT_CAPS, inbox)
        # The child is frozen until every call has been given up on, so none is answered in time however slowly the
        # machine runs. The stall (no seconds: it just hangs until cancelled) never answers at all, only the fence's
        # ping can clear it; the 10 notes queued behind it answer late.
        async with frozen(pid):
            calls = [view.request(call("stall", {"seconds": 0}, request_id=0), timeout=1)]
            calls += [view.request(call("note", {"text": f"n{i}"}, request_id=i + 1), timeout=1) for i in range(10)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, GatewayError) and r.reason == "upstream_timeout" for r in results), results
            assert len(upstream._tasks) <= 1  # (on the old code: one fence task per call)
            assert len(upstream._table) <= 12  # 11 tombstones and at most one fence ping
        # Once the child answers again, one ping (and the late answers) clears them all, no restart needed.
        await eventually(lambda: len(upstream._table) == 0 and not upstream._tasks, within=30)
        assert text_of(await view.request(call("note", {"text": "mine"}, request_id=99), timeout=30)) == "noted"
        assert len(restarts) == restarted_before and upstream.health().restarts == restarts_before
        assert upstream.pid == pid
    finally:
        await upstream.stop()
