"""`logging/setLevel` in the aggregated view is the gateway's promise: it answers `{}` for every upstream, so the
log lines a session is given honour the level it set, whether or not an upstream implements `logging/setLevel`
(real gateway, real SDK clients over Streamable HTTP and legacy SSE, a real HTTP SDK server without setLevel)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.support.feature_server import FEATURE_SERVER_PATH, feature_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


class Logs:
    """The log lines one SDK client session received."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        self.lines.append(str(params.data))


@pytest.fixture
async def gateway_url(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[str]:
    server, _ = feature_server()  # its tools log at info; it has no logging/setLevel (method not found)
    async with run_http_server(server) as url:
        gw = await start_gateway({"upstreams": [{"name": "feat", "url": url}],
                                  "policies": {"dir": str(permissive_policies)}})
        yield gw.url


def streamable(base: str) -> Callable[[Logs], AbstractAsyncContextManager[Client]]:
    return lambda logs: sdk_client(f"{base}/mcp", logging_callback=logs)


def legacy(base: str) -> Callable[[Logs], AbstractAsyncContextManager[Client]]:
    return lambda logs: Client(sse_client(f"{base}/sse"), mode="legacy", logging_callback=logs)


@pytest.mark.parametrize("inbound", [streamable, legacy])
async def test_a_level_the_gateway_accepted_filters_what_the_session_is_given(
        gateway_url: str, inbound: Callable[[str], Callable[[Logs], AbstractAsyncContextManager[Client]]]) -> None:
    connect = inbound(gateway_url)
    quiet, chatty = Logs(), Logs()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(connect(quiet))
        b = await stack.enter_async_context(connect(chatty))
        assert await a.set_logging_level("error") is not None  # accepted ({}), though the upstream has no setLevel
        await b.set_logging_level("debug")
        steps: list[float] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            steps.append(done)
        await a.call_tool("feat__progress", {"steps": 2}, progress_callback=progress)
        await b.call_tool("feat__progress", {"steps": 2})
        await eventually(lambda: chatty.lines == ["log 1", "log 2"], within=10)
        await eventually(lambda: steps == [1, 2], within=10)  # a's call did send its messages
        # On the old code a got "log 1" and "log 2" (info) after asking for errors only.
        assert quiet.lines == []
        await a.set_logging_level("info")
        await a.call_tool("feat__progress", {"steps": 1})
        await eventually(lambda: quiet.lines == ["log 1"], within=10)


@pytest.fixture(params=["http", "stdio"])
async def stateless_url(request: pytest.FixtureRequest, start_gateway: Any, permissive_policies: Path
                        ) -> AsyncIterator[str]:
    async with AsyncExitStack() as stack:
        if request.param == "stdio":
            upstream: dict[str, Any] = {"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH]}
        else:
            upstream = {"name": "feat", "url": await stack.enter_async_context(run_http_server(feature_server()[0]))}
        gw = await start_gateway({"upstreams": [upstream], "policies": {"dir": str(permissive_policies)}})
        yield gw.mcp


@pytest.mark.parametrize(("log_level", "expected"), [(None, []), ("error", []), ("info", ["log 1", "log 2"])])
async def test_a_stateless_call_gets_log_lines_only_when_it_opts_in(
        stateless_url: str, log_level: str | None, expected: list[str]) -> None:
    # 2026-07-28: the client opts in per request (`_meta` io.modelcontextprotocol/logLevel); without it the server
    # MUST NOT send notifications/message. The upstream speaks a handshake revision and sends every line anyway.
    logs = Logs()
    steps: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        steps.append(done)
    async with sdk_client(stateless_url, mode="auto", logging_callback=logs, log_level=log_level) as client:
        await client.call_tool("feat__progress", {"steps": 2}, progress_callback=progress)
        await eventually(lambda: steps == [1, 2], within=10)  # the call's stream carried its messages
        await eventually(lambda: logs.lines == expected, within=10)
        # On the old code a call that did not opt in (or asked for errors only) got both info lines.
        assert logs.lines == expected
