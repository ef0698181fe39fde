"""What an upstream sends during a call or on its own never hands the agent a secret the gateway holds.

The answer to a call is scrubbed (test_cred_static_echo.py); so is every message the gateway relays from an
upstream: progress, log lines (on the call's stream and on the session's own), elicitation and sampling requests.
Over each upstream transport (streamable HTTP, legacy SSE, stdio: its child knows the key from its environment,
the gateway from another upstream's static credential), on the aggregated and the one-upstream endpoint, and to a
legacy SSE agent. Real gateway, real SDK upstreams, real SDK agent.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from gateway.app import GATEWAY
from gateway.credentials.redaction import Redactor
from gateway.server_messages import _scrubbed
from tests.credentials.leaky_server import LEAKY_SERVER_PATH, leaky_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server, run_sse_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
KEY = "sk-static-Qw3rTy-9f8e7d6c"
STATIC = {"mode": "static", "value_env": "LEAKY_GATEWAY_KEY", "value_prefix": "Bearer "}


class Agent:
    """Everything an SDK agent is given besides answers: progress, log lines, elicitation and sampling requests."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.unrelated = asyncio.Event()

    async def on_progress(self, done: float, total: float | None, message: str | None) -> None:
        self.seen.append(f"progress: {message}")

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.seen.append(f"log: {params.data}")
        if isinstance(params.data, dict) and "outside" in params.data:
            self.unrelated.set()

    async def on_elicit(self, ctx: Any, params: Any) -> types.ElicitResult:
        self.seen.append(f"elicit: {params.message}")
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def on_sample(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.seen.append(f"sample: {params.messages[0].content}")
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text",
                                                                                                 text="sampled"))

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.seen.append(f"updated: {message.params.uri}")

    def callbacks(self) -> dict[str, Any]:
        return {"logging_callback": self.on_log, "elicitation_callback": self.on_elicit,
                "sampling_callback": self.on_sample, "message_handler": self.on_message}


@asynccontextmanager
async def upstreams(transport: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The leaky upstream (`leaky`) over `transport`; the gateway holds KEY as a static credential (of `leaky`
    itself over HTTP, of another upstream beside a stdio child, which can carry none)."""
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            keyed = await stack.enter_async_context(run_http_server(leaky_server(KEY)))
            yield [{"name": "leaky", "command": [sys.executable, LEAKY_SERVER_PATH], "env": {"LEAKY_KEY": KEY}},
                   {"name": "keyed", "url": keyed, "credentials": STATIC}]
            return
        run = run_sse_server if transport == "sse" else run_http_server
        url = await stack.enter_async_context(run(leaky_server(KEY)))
        yield [{"name": "leaky", "url": url, "credentials": STATIC, **({"transport": "sse"} if transport == "sse"
                                                                        else {})}]


@pytest.mark.parametrize("endpoint", ["/mcp", "/mcp/leaky", "/sse", "stateless"])
@pytest.mark.parametrize("transport", ["http", "sse", "stdio"])
async def test_messages_an_upstream_sends_have_the_gateways_key_taken_out(
        transport: str, endpoint: str, start_gateway: Any, permissive_policies: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKY_GATEWAY_KEY", KEY)
    agent = Agent()
    async with upstreams(transport) as configured:
        gw = await start_gateway({"upstreams": configured, "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        tool = "leak" if endpoint == "/mcp/leaky" else "leaky__leak"
        if endpoint == "/sse":
            client = Client(sse_client(f"{gw.url}/sse"), mode="legacy", **agent.callbacks())
        elif endpoint == "stateless":  # 2026-07-28: no session stream, no server→client requests (progress, log)
            # log_level: that revision's per-request opt-in (`_meta` logLevel); without it no log line is sent
            client = sdk_client(gw.mcp, mode="auto", logging_callback=agent.on_log, log_level="debug")
            tool = "leaky__chatter"
        else:
            client = sdk_client(gw.url + endpoint, **agent.callbacks())
        async with client as c:
            if endpoint.startswith("/mcp"):  # the session's own stream is open: a line sent outside the call reaches it
                sessions = gw.app[GATEWAY].sessions._sessions.values()
                await eventually(lambda: any(s.get_stream_open for s in sessions))
            result = await c.call_tool(tool, {}, progress_callback=agent.on_progress)
            if endpoint != "stateless":
                await asyncio.wait_for(agent.unrelated.wait(), 15)
    answer = "chattered" if endpoint == "stateless" else "accept sampled"
    assert not result.is_error and result.content[0].text == answer, result  # type: ignore[union-attr]
    seen = "\n".join(agent.seen)
    # (on the old code each of these quoted the key: only the call's answer was scrubbed)
    assert KEY not in seen, seen
    for expected in ("progress: progress with [REDACTED]", "log: log with [REDACTED]",
                     "elicit: confirm the key [REDACTED]", "sample: type='text' text='sample [REDACTED]'",
                     "log: {'outside': 'unrelated [REDACTED]'}")[:2 if endpoint == "stateless" else 5]:
        assert any(line.startswith(expected) for line in agent.seen), (expected, agent.seen)
    # A resource update outside the call, under the URI the client knows it by (the aggregated view names its
    # upstream). Not from a stdio child every session shares: it goes to the sessions subscribed to that URI only.
    if endpoint != "stateless" and transport != "stdio":
        prefix = "customs://leaky/" if endpoint in ("/mcp", "/sse") else ""
        assert f"updated: {prefix}file:///keys/[REDACTED]" in agent.seen, agent.seen


def test_a_message_without_the_key_is_passed_on_as_it_came() -> None:
    line = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "fine"}}
    assert _scrubbed(Redactor(known_secrets=[KEY]).scrub_known, line) is line
    assert _scrubbed(Redactor().scrub_known, line) is line  # no secret held: nothing encoded, nothing copied
    bare = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    assert _scrubbed(Redactor(known_secrets=[KEY]).scrub_known, bare) is bare
    request = {"jsonrpc": "2.0", "id": "customs-1", "method": "elicitation/create",
               "params": {"message": f"key {KEY}"}}
    assert _scrubbed(Redactor(known_secrets=[KEY]).scrub_known, request) == {**request,
                                                                            "params": {"message": "key [REDACTED]"}}
