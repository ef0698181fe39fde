"""An upstream whose pagination breaks after its first page, in the aggregated view's lists (real gateway, two
real SDK streamable-HTTP upstreams, the SDK's own client).

The aggregated list used to drop such an upstream's cursor: the list ended with no `nextCursor` and without
that upstream's later items, as if it were complete. Now its cursor is kept (the failed page is asked again
with the next one), a warning names the upstream, and a page on which no upstream answers is an error, so an
agent never takes a list cut short for the whole list; the other upstream's items are all listed either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
PAGE = 2
BROKEN_MESSAGE = "page store unavailable"

Lister = Callable[[Client, str | None], Awaitable[Any]]
# method -> (client call for one page, the names on a page, the aggregated name of item i of an upstream)
LISTS: dict[str, tuple[Lister, Callable[[Any], list[str]], Callable[[str, int], str]]] = {
    "tools/list": (lambda c, cur: c.list_tools(cursor=cur), lambda r: [t.name for t in r.tools],
                   lambda up, i: f"{up}__{up}_{i}"),
    "prompts/list": (lambda c, cur: c.list_prompts(cursor=cur), lambda r: [p.name for p in r.prompts],
                     lambda up, i: f"{up}__{up}_{i}"),
    "resources/list": (lambda c, cur: c.list_resources(cursor=cur), lambda r: [str(x.uri) for x in r.resources],
                       lambda up, i: f"customs://{up}/{up}://item/{i}"),
    "resources/templates/list": (lambda c, cur: c.list_resource_templates(cursor=cur),
                                 lambda r: [t.uri_template for t in r.resource_templates],
                                 lambda up, i: f"customs://{up}/{up}://item/{i}/{{part}}"),
}


def paged_server(name: str, count: int, broken: dict[str, bool]) -> Server[Any]:
    """Every list in pages of PAGE; while `broken["later"]`, any page after the first fails (a JSON-RPC error)."""
    def window(params: Any) -> tuple[range, str | None]:
        start = int(params.cursor) if params is not None and params.cursor else 0
        if start and broken["later"]:
            raise MCPError(-32603, BROKEN_MESSAGE)
        end = min(start + PAGE, count)
        return range(start, end), (str(end) if end < count else None)

    async def tools(ctx: Any, params: Any) -> types.ListToolsResult:
        ids, more = window(params)
        return types.ListToolsResult(tools=[types.Tool(name=f"{name}_{i}", input_schema={"type": "object"})
                                            for i in ids], next_cursor=more)

    async def prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        ids, more = window(params)
        return types.ListPromptsResult(prompts=[types.Prompt(name=f"{name}_{i}") for i in ids], next_cursor=more)

    async def resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        ids, more = window(params)
        return types.ListResourcesResult(resources=[types.Resource(name=f"r{i}", uri=f"{name}://item/{i}")
                                                    for i in ids], next_cursor=more)

    async def templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        ids, more = window(params)
        return types.ListResourceTemplatesResult(
            resource_templates=[types.ResourceTemplate(name=f"t{i}", uri_template=f"{name}://item/{i}/{{part}}")
                                for i in ids], next_cursor=more)

    return Server(name, on_list_tools=tools, on_list_prompts=prompts, on_list_resources=resources,
                  on_list_resource_templates=templates)


@pytest.mark.parametrize("method", sorted(LISTS))
async def test_a_later_page_that_fails_does_not_cut_the_list_short(
        start_gateway: Any, permissive_policies: Path, caplog: pytest.LogCaptureFixture, method: str) -> None:
    ask, names_of, exposed = LISTS[method]
    broken = {"later": True}
    healthy = {"later": False}
    async with run_http_server(paged_server("alpha", 5, broken)) as a, \
            run_http_server(paged_server("beta", 6, healthy)) as b:
        gw = await start_gateway({"upstreams": [{"name": "alpha", "url": a}, {"name": "beta", "url": b}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        async with sdk_client(gw.mcp) as client:
            seen: list[str] = []
            cursor: str | None = None
            failed_at: str | None = None
            for _ in range(10):
                try:
                    result = await ask(client, cursor)
                except MCPError as exc:
                    # Only alpha is left and it does not answer: the list says so instead of ending.
                    assert BROKEN_MESSAGE in exc.error.message, exc.error
                    failed_at = cursor
                    break
                seen += names_of(result)
                cursor = result.next_cursor
                if not cursor:
                    break
            # beta is listed in full; alpha's first page only, and the list did not pass for complete.
            assert sorted(n for n in seen if "beta" in n) == sorted(exposed("beta", i) for i in range(6))
            assert sorted(n for n in seen if "alpha" in n) == sorted(exposed("alpha", i) for i in range(PAGE))
            assert failed_at is not None, "the list ended as if complete without alpha's later items"
            warnings = [r.getMessage() for r in caplog.records
                        if r.name == "customs.listing" and r.levelno >= logging.WARNING]
            assert any(method in w and "alpha" in w and "later page" in w for w in warnings), warnings
            # The cursor the error answered is still good: once alpha answers again, the rest follows.
            broken["later"] = False
            cursor = failed_at
            while cursor:
                result = await ask(client, cursor)
                seen += names_of(result)
                cursor = result.next_cursor
            assert sorted(seen) == sorted([exposed("alpha", i) for i in range(5)]
                                          + [exposed("beta", i) for i in range(6)])


async def test_a_first_page_that_fails_still_leaves_the_upstream_out(
        start_gateway: Any, permissive_policies: Path) -> None:
    # Unchanged: an upstream that fails its first page is left out and the others are listed (logged at INFO).
    async with run_http_server(paged_server("beta", 3, {"later": False})) as b:
        gw = await start_gateway({"upstreams": [{"name": "alpha", "url": "http://127.0.0.1:9/mcp"},  # nothing there
                                                {"name": "beta", "url": b}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        async with sdk_client(gw.mcp) as client:
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(5):
                result = await client.list_tools(cursor=cursor)
                seen += [t.name for t in result.tools]
                cursor = result.next_cursor
                if not cursor:
                    break
            assert sorted(seen) == ["beta__beta_0", "beta__beta_1", "beta__beta_2"]
