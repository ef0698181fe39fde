"""Server→client requests (sampling here) the gateway relays and awaits the client's answer to are
forgotten when the call they were sent for ends, and are bounded in number when the client never
answers (real SDK client, gateway and server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from gateway.app import GATEWAY
from gateway.server_messages import MAX_SERVER_REQUESTS
from gateway.sessions import Session
from tests.support.feature_server import feature_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[Any]:
    async with run_http_server(feature_server()[0]) as url:
        yield await start_gateway({"upstreams": [{"name": "feat", "url": url, "timeout_s": 30}], "identity": ANON,
                                   "policies": {"dir": str(permissive_policies)}})


class Silent:
    """A client that is asked to sample and never answers."""

    def __init__(self) -> None:
        self.asked = 0

    async def on_sample(self, ctx: Any, params: Any) -> types.CreateMessageResult:
        self.asked += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def only_session(gw: Any) -> Session:
    sessions = list(gw.app[GATEWAY].sessions._sessions.values())
    assert len(sessions) == 1
    return sessions[0]  # type: ignore[no-any-return]


async def test_a_withdrawn_call_leaves_no_server_request_awaiting_an_answer(gw: Any) -> None:
    client = Silent()
    async with sdk_client(f"{gw.mcp}/feat", sampling_callback=client.on_sample) as c:
        for n in range(3):
            call = asyncio.create_task(c.call_tool("overlap", {"tag": "A", "group": f"g{n}", "parties": 1,
                                                               "sample": True}))
            await eventually(lambda n=n: client.asked == n + 1)  # type: ignore[misc]
            call.cancel()  # the SDK sends notifications/cancelled; the gateway withdraws the call upstream
            await asyncio.gather(call, return_exceptions=True)
        session = only_session(gw)
        await eventually(lambda: not session.inflight)
        # (on the old code all three stayed: the upstream's own cancellation went down the closed call stream)
        assert session.server_requests == {}


async def test_unanswered_server_requests_are_bounded(gw: Any) -> None:
    client = Silent()
    async with sdk_client(f"{gw.mcp}/feat", sampling_callback=client.on_sample) as c:
        calls = [asyncio.create_task(c.call_tool("overlap", {"tag": str(n), "group": f"g{n}", "parties": 1,
                                                             "sample": True}))
                 for n in range(MAX_SERVER_REQUESTS + 1)]
        # The first request given up is answered upstream with an error, so its call ends (as an error).
        done, _ = await asyncio.wait(calls, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "no call ended: the oldest server request was never given up"
        assert len(only_session(gw).server_requests) <= MAX_SERVER_REQUESTS
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
