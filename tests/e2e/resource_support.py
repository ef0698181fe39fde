"""Shared by the aggregated-resource tests: what each upstream saw, recording subscribe/complete handlers, the
gateway in front of them, read text, collected resource updates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from tests.support.servers import run_http_server


@dataclass
class Seen:
    """What reached one upstream, as (method, the URI it was given); lists are not recorded."""

    requests: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Env:
    mcp: str
    seen: dict[str, Seen]


@asynccontextmanager
async def resource_gateway(start_gateway: Any, policies: Any, names: Sequence[str],
                           make_server: Callable[[str, Seen], Any]) -> AsyncIterator[Env]:
    """One real SDK upstream per name (built by `make_server`) behind a fresh gateway."""
    seen = {name: Seen() for name in names}
    async with AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(run_http_server(make_server(name, seen[name])))
                for name in names}
        gw = await start_gateway({"upstreams": [{"name": n, "url": u} for n, u in urls.items()],
                                  "policies": {"dir": str(policies)}})
        yield Env(gw.mcp, seen)


def text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


def record_subscriptions_and_completions(server: Any, name: str, seen: Seen) -> None:
    """resources/subscribe, resources/unsubscribe and completion/complete on a low-level SDK server, each
    recorded in `seen` with the URI it was given; completions answer `<name>-<value>`."""
    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        seen.requests.append(("resources/subscribe", str(params.uri)))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        seen.requests.append(("resources/unsubscribe", str(params.uri)))
        return types.EmptyResult()

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        seen.requests.append(("completion/complete", str(getattr(params.ref, "uri", ""))))
        return types.CompleteResult(completion=types.Completion(values=[f"{name}-{params.argument.value}"]))

    server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    server.add_request_handler("completion/complete", types.CompleteRequestParams, complete)


@dataclass
class Updates:
    """notifications/resources/updated a client received (its `message_handler`), and one arriving."""

    uris: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.uris.append(message.params.uri)
            self.arrived.set()
