"""Two client sessions at once on one shared stdio child, through the gateway with real SDK clients:
each gets exactly its own progress, never the other's logs or server→client requests, and the
child's cancellation of its own request reaches the client under the id the client knows."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, CreateMessageResult, LoggingMessageNotificationParams, TextContent

from gateway.config.model import UpstreamConfig
from gateway.transport.stdio import StdioUpstream
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.support.mcp_client import sdk_client
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually

ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


@dataclass
class Peer:
    """One client session's view of what reached it."""

    tag: str
    logs: list[str] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    hold_sampling: bool = False
    sampling_started: asyncio.Event = field(default_factory=asyncio.Event)
    sampling_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append(str(message))

    async def on_sample(self, context: Any, params: Any) -> CreateMessageResult:
        prompt = params.messages[0].content.text
        self.prompts.append(prompt)
        self.sampling_started.set()
        if self.hold_sampling:
            try:
                await asyncio.Event().wait()  # answered never: only a cancellation ends it
            except asyncio.CancelledError:
                self.sampling_cancelled.set()
                raise
        return CreateMessageResult(role="assistant", model="test",
                                   content=TextContent(type="text", text=f"{self.tag} answers {prompt}"))


@dataclass
class Env:
    gw: Any
    url: str

    def table_empty(self) -> bool:
        return len(self.gw.gateway.parts.upstreams["feat"]._table) == 0


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Path) -> Env:
    gw = await start_gateway({
        "upstreams": [{"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH], "timeout_s": 30}],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    return Env(gw, f"{gw.mcp}/feat")


async def clients(stack: AsyncExitStack, url: str, *peers: Peer) -> AsyncIterator[Client]:
    for peer in peers:
        yield await stack.enter_async_context(sdk_client(url, logging_callback=peer.on_log,
                                                         sampling_callback=peer.on_sample))


async def connect(stack: AsyncExitStack, url: str, *peers: Peer) -> list[Client]:
    return [client async for client in clients(stack, url, *peers)]


def text(result: CallToolResult) -> str:
    content = result.content[0]
    return content.text if isinstance(content, TextContent) else repr(content)


async def until(predicate: Callable[[], bool]) -> None:
    await eventually(predicate, within=10)


async def test_each_session_gets_exactly_its_own_progress_and_only_its_own_logs(env: Env) -> None:
    a, b = Peer("A"), Peer("B")
    async with AsyncExitStack() as stack:
        ca, cb = await connect(stack, env.url, a, b)
        # Both calls meet inside the child before reporting; both clients use progress token 1.
        ra, rb = await asyncio.gather(*(
            client.call_tool("overlap", {"tag": peer.tag, "group": "both", "parties": 2, "steps": 20},
                             progress_callback=peer.on_progress)
            for client, peer in ((ca, a), (cb, b))))
        assert (text(ra), text(rb)) == ("A", "B")
        await until(lambda: len(a.progress) >= 20 and len(b.progress) >= 20)
        for peer in (a, b):
            assert sorted(peer.progress) == sorted(f"{peer.tag} {n}" for n in range(1, 21)), peer
            # While both calls run the wire cannot say whose a log line is: none may cross over.
            assert all(line.startswith(f"{peer.tag} ") for line in peer.logs), peer
        # Alone on the child, a session's log lines provably are its own: they are delivered.
        await ca.call_tool("overlap", {"tag": "A-alone", "group": "solo", "parties": 1, "steps": 3})
        await until(lambda: "A-alone log 3" in a.logs)
        assert not any(line.startswith("A") for line in b.logs)


async def test_sampling_never_reaches_another_session(env: Env) -> None:
    a, b = Peer("A"), Peer("B")
    async with AsyncExitStack() as stack:
        ca, cb = await connect(stack, env.url, a, b)
        sampling = asyncio.create_task(ca.call_tool("overlap", {"tag": "A", "group": "s", "parties": 2,
                                                                "sample": True}))
        await until(lambda: "A waiting" in a.logs)  # A's call is in the child: B's starts after it
        hanging = asyncio.create_task(cb.call_tool("overlap", {"tag": "B", "group": "s", "parties": 2,
                                                               "hang": True}))
        # The child's sampling request cannot be tied to A or B on the wire: refused, never guessed.
        with pytest.raises(MCPError) as info:
            await asyncio.wait_for(sampling, 20)  # (on the old code: B's answer came back to A)
        assert "cannot tell which client session" in str(info.value)
        assert a.prompts == [] and b.prompts == []
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)
        # One session at a time, each gets its own sampling request and its own answer.
        assert text(await cb.call_tool("sample", {"prompt": "from B"})) == "B answers from B"
        await until(env.table_empty)  # B's cancelled call is over at the child
        assert text(await ca.call_tool("sample", {"prompt": "from A"})) == "A answers from A"
        assert a.prompts == ["from A"] and b.prompts == ["from B"]


async def test_upstream_cancellation_of_its_request_carries_the_clients_id(env: Env) -> None:
    a = Peer("A", hold_sampling=True)
    async with AsyncExitStack() as stack:
        (ca,) = await connect(stack, env.url, a)
        call = asyncio.create_task(ca.call_tool("sample", {"prompt": "never answered"}))
        await asyncio.wait_for(a.sampling_started.wait(), 10)
        call.cancel()  # the tool is cancelled, so the child cancels its sampling request
        await asyncio.gather(call, return_exceptions=True)
        # The client applies notifications/cancelled only when it names the id it got the request with.
        await asyncio.wait_for(a.sampling_cancelled.wait(), 10)


async def test_only_the_asked_session_may_answer_and_an_ending_session_refuses() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="features", command=(sys.executable, FEATURE_SERVER_PATH),
                                            timeout_s=20))
    await upstream.start()
    try:
        inbox_a, inbox_b = Inbox(), Inbox()  # neither answers by itself
        a = await upstream.connect(CLIENT_CAPS, inbox_a)
        b = await upstream.connect(CLIENT_CAPS, inbox_b)
        sampling = asyncio.create_task(a.request(call("sample", {"prompt": "for A"})))
        asked = await inbox_a.wait_for(lambda m: m.get("method") == "sampling/createMessage")
        # B forging an answer to A's request is dropped: A's call is still waiting for A.
        await b.respond({"jsonrpc": "2.0", "id": asked["id"], "result": {
            "role": "assistant", "model": "m", "content": {"type": "text", "text": "forged by B"}}})
        # A round trip after the forged answer: had the child taken it, the call would be over by now.
        assert (await b.request({"jsonrpc": "2.0", "id": 9, "method": "ping"}))["result"] == {}
        assert not sampling.done()
        await a.close()  # A goes away owing an answer: the child is told at once, nothing waits for ever
        response = await asyncio.wait_for(sampling, 10)
        assert response["error"]["message"] == "The client session ended", response
        assert "sampling/createMessage" not in inbox_b.methods()
    finally:
        await upstream.stop()
