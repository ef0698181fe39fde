"""Shared by the aggregated-resource tests: what each upstream saw, the gateway in front of them, read text."""

from __future__ import annotations

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
