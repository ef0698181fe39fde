"""URL-mode elicitation over a stdio child every session shares: the child's
`notifications/elicitation/complete`, sent after the call that asked has been answered, reaches the
session that got the `elicitation/create` with that id, though the wire does not say which session it
is for (real gateway, real SDK clients, real stdio SDK server)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from tests.support.mcp_client import sdk_client
from tests.transport.watch_server import WATCH_SERVER_PATH

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


class Completions:
    """The elicitation completions one SDK client session received."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrived = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            self.ids.append(message.params.elicitation_id)
            self.arrived.set()


async def accept(ctx: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept")


@pytest.mark.parametrize("view", ["/watch", ""])
async def test_completion_reaches_the_session_that_was_asked(start_gateway: Any, permissive_policies: Path,
                                                             view: str) -> None:
    gw = await start_gateway({
        "upstreams": [{"name": "watch", "command": [sys.executable, WATCH_SERVER_PATH], "timeout_s": 30}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    asked, other = Completions(), Completions()
    tool = "url_flow" if view else "watch__url_flow"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(sdk_client(gw.mcp + view, message_handler=asked,
                                                       elicitation_callback=accept))
        b = await stack.enter_async_context(sdk_client(gw.mcp + view, message_handler=other))
        await b.list_tools()  # b is connected to the child too: two sessions share it
        result = await a.call_tool(tool, {"elicitation_id": "e-1"})
        assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "accept"
        # (on the old code it was dropped: no call was live and two sessions were connected)
        await asyncio.wait_for(asked.arrived.wait(), 10)
        assert asked.ids == ["e-1"] and other.ids == []
