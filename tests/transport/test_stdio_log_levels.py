"""`logging/setLevel` on a stdio child every session shares: one session's level must not decide what
another receives (real gateway, real SDK clients, a real stdio SDK server that honours the level)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from tests.support.mcp_client import sdk_client
from tests.transport.conftest import eventually
from tests.transport.watch_server import WATCH_SERVER_PATH

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


class Logs:
    """The log lines one SDK client session received."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        self.lines.append(str(params.data))


@pytest.fixture
async def watch_url(start_gateway: Any, permissive_policies: Path) -> str:
    gw = await start_gateway({
        "upstreams": [{"name": "watch", "command": [sys.executable, WATCH_SERVER_PATH], "timeout_s": 30}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    return f"{gw.mcp}/watch"


@pytest.mark.parametrize("view", ["/watch", ""])
async def test_a_sessions_level_does_not_silence_another_session(watch_url: str, view: str) -> None:
    url = watch_url.removesuffix("/watch") + view
    note = "note" if view else "watch__note"
    quiet, chatty = Logs(), Logs()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(sdk_client(url, logging_callback=quiet))
        b = await stack.enter_async_context(sdk_client(url, logging_callback=chatty))
        await b.set_logging_level("info")
        await a.set_logging_level("error")  # on the old code this set the shared child's level for b too
        await b.call_tool(note, {"text": "for b"})
        await eventually(lambda: chatty.lines == ["for b"], within=10)
        # a asked for errors only: an info line of its own call does not reach it.
        await a.call_tool(note, {"text": "for a"})
        await b.call_tool(note, {"text": "b again"})
        await eventually(lambda: chatty.lines == ["for b", "b again"], within=10)
        await asyncio.sleep(0)
        assert quiet.lines == []


@pytest.mark.parametrize("joins_later", [False, True])
async def test_a_session_that_set_no_level_keeps_getting_log_lines(watch_url: str, joins_later: bool) -> None:
    quiet, plain = Logs(), Logs()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(sdk_client(watch_url, logging_callback=quiet))
        if joins_later:  # the child was set to emergency while a was its only session
            await a.set_logging_level("emergency")
        b = await stack.enter_async_context(sdk_client(watch_url, logging_callback=plain))
        if not joins_later:
            await a.set_logging_level("emergency")
        await b.call_tool("note", {"text": "default"})
        await eventually(lambda: plain.lines == ["default"], within=10)
