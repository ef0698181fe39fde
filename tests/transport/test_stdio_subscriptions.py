"""A shared stdio child, through real SDK clients and directly: `notifications/resources/updated`
reaches only the sessions subscribed to that URI (one session's unsubscribe or end does not end
another's subscription at the child), a request whose fence ping was answered late stops counting
as live, and a gateway-internal view never makes a lone client session look shared."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Message
from gateway.transport.stdio import StdioUpstream
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.support.mcp_client import sdk_client
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually, frozen, is_log, text_of
from tests.transport.watch_server import WATCH_SERVER_PATH

# resources/(un)subscribe are the handshake revisions' way (2026-07-28 replaces them), which the SDK warns about.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


class Updates:
    """The resource updates one SDK client session received."""

    def __init__(self) -> None:
        self.uris: list[str] = []

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.uris.append(str(message.params.uri))


@pytest.fixture
async def watch_url(start_gateway: Any, permissive_policies: Path) -> str:
    gw = await start_gateway({
        "upstreams": [{"name": "watch", "command": [sys.executable, WATCH_SERVER_PATH], "timeout_s": 30}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    return f"{gw.mcp}/watch"


async def touch(client: Any, uri: str) -> str:
    content = (await client.call_tool("touch", {"uri": uri})).content[0]
    assert isinstance(content, types.TextContent)
    return content.text


async def test_resource_update_reaches_only_the_subscribed_session(watch_url: str) -> None:
    a, b = Updates(), Updates()
    async with AsyncExitStack() as stack:
        ca = await stack.enter_async_context(sdk_client(watch_url, message_handler=a))
        cb = await stack.enter_async_context(sdk_client(watch_url, message_handler=b))
        await ca.subscribe_resource("watch://a")
        assert await touch(cb, "watch://a") == "touched"  # B's own call makes the child announce A's URI
        await eventually(lambda: a.uris == ["watch://a"], within=10)
        # B's stream is ordered: once B's own update arrives, A's would have arrived before it.
        await cb.subscribe_resource("watch://b")
        assert await touch(ca, "watch://b") == "touched"
        await eventually(lambda: b.uris == ["watch://b"], within=10)  # (on the old code: A's URI came first)
        assert a.uris == ["watch://a"]

        # Both hold watch://a: A unsubscribing must not end B's subscription at the child.
        await cb.subscribe_resource("watch://a")
        await ca.unsubscribe_resource("watch://a")
        assert await touch(ca, "watch://a") == "touched"
        await eventually(lambda: b.uris == ["watch://b", "watch://a"], within=10)
        assert a.uris == ["watch://a"]
        await cb.unsubscribe_resource("watch://a")  # the last holder: now the child is told
        assert await touch(ca, "watch://a") == "not subscribed"

        # A session that ends holding the only subscription to a URI: the child stops announcing it.
        await stack.aclose()
    async with sdk_client(watch_url) as late:
        async def gone() -> bool:
            return await touch(late, "watch://b") == "not subscribed"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await gone():
            assert loop.time() < deadline, "the ended session's subscription stayed at the child"
            await asyncio.sleep(0.05)  # polling the child's state with a deadline


@pytest.fixture
async def watch_stdio() -> AsyncIterator[StdioUpstream]:
    # timeout_s is the fence ping's: unanswered that long it is late (WARNING), STUCK_AFTER times that the child is
    # restarted as stuck; the test's calls give up sooner, with their own timeout.
    upstream = StdioUpstream(UpstreamConfig(name="watch", command=(sys.executable, WATCH_SERVER_PATH), timeout_s=3))
    await upstream.start()
    # connect() waits for the child only timeout_s: a loaded machine can take longer to start a Python child.
    await eventually(lambda: upstream.health().ready, within=30)
    yield upstream
    await upstream.stop()


async def test_a_late_fence_answer_still_clears_the_abandoned_request(
        watch_stdio: StdioUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "customs.upstream.watch")
    inbox = Inbox()
    view = await watch_stdio.connect(CLIENT_CAPS, inbox)
    pid, restarts = watch_stdio.pid, watch_stdio.health().restarts
    # The child is frozen until the fence's ping is late: it answers neither the call (given up after 0.5 s) nor the
    # ping written after the call's cancellation (unanswered for timeout_s: WARNING), however slowly the machine runs.
    # The stall (no seconds: it just hangs until cancelled) never answers at all: only the ping's answer can clear it.
    async with frozen(pid):
        with pytest.raises(GatewayError) as info:
            await view.request(call("stall", {"seconds": 0}), timeout=0.5)
        assert info.value.reason == "upstream_timeout"
        await eventually(lambda: any("reach no session until it does" in r.getMessage() for r in caplog.records),
                         within=30)
        assert len(watch_stdio._table) == 2  # the abandoned call's tombstone and the fence's ping
    # Continued long before the ping's STUCK_AFTER x timeout_s: its late answer ends the abandoned call.
    await eventually(lambda: len(watch_stdio._table) == 0, within=30)  # (on the old code: never)
    assert watch_stdio.pid == pid and watch_stdio.health().restarts == restarts  # not cleared by a restart
    assert text_of(await view.request(call("note", {"text": "mine"}, request_id=2), timeout=30)) == "noted"
    await inbox.wait_for(is_log("mine"))


async def test_an_internal_view_does_not_make_a_lone_session_look_shared() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="features", command=(sys.executable, FEATURE_SERVER_PATH),
                                            timeout_s=20))
    await upstream.start()
    try:
        views: list[Any] = []
        inbox = Inbox(lambda: views[0])  # answers the sampling request like a client
        views.append(await upstream.connect(CLIENT_CAPS, inbox))

        async def ignore(message: Message) -> None:
            return None
        internal = await upstream.connect(ConnectParams(internal=True), ignore)  # e.g. the pin watcher's
        hanging = asyncio.create_task(internal.request(call("overlap", {
            "tag": "pins", "group": "g", "parties": 2, "hang": True}, request_id="customs-pins-0")))
        sampled = await views[0].request(call("overlap", {"tag": "A", "group": "g", "parties": 2, "sample": True}))
        assert text_of(sampled) == "sampled answer", sampled  # (on the old code: client_unknown)
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)
        await internal.close()
    finally:
        await upstream.stop()


async def test_a_restarted_child_is_subscribed_again_to_what_sessions_hold() -> None:
    """The child crashed and was restarted: the sessions that had subscribed (and never unsubscribed) still
    expect updates, but the new child held no subscription and the gateway forgot them, so updates stopped
    for good without a word. The new child is now subscribed again to every URI a connected session holds."""
    upstream = StdioUpstream(UpstreamConfig(name="watch", command=(sys.executable, WATCH_SERVER_PATH), timeout_s=20))
    await upstream.start()
    try:
        inbox = Inbox()
        view = await upstream.connect(CLIENT_CAPS, inbox)
        subscribe = {"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": "watch://a"}}
        assert (await view.request(subscribe))["result"] == {}
        first = upstream.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: upstream.health().ready and upstream.pid not in (None, first), within=30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        n = 2
        while text_of(await view.request(call("touch", {"uri": "watch://a"}, request_id=n))) != "touched":
            assert loop.time() < deadline, "the new child was not subscribed again"  # (on the old code: never)
            await asyncio.sleep(0.05)  # polling the child's state, bounded by the deadline
            n += 1
        await inbox.wait_for(lambda m: m.get("method") == "notifications/resources/updated")
    finally:
        await upstream.stop()
