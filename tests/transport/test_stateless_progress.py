"""Two stateless (2026-07-28) clients of one principal share the gateway's implicit session and its
upstream sessions; when both use the same progress token at once, each still gets exactly its own
progress notifications, over every upstream transport (real SDK clients, gateway and servers)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.support.feature_server import FEATURE_SERVER_PATH, feature_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server, run_sse_server

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


@pytest.fixture(params=["http", "sse", "stdio"])
async def feat_url(request: pytest.FixtureRequest, start_gateway: Any, permissive_policies: Path,
                   tmp_path: Path) -> AsyncIterator[str]:
    async with AsyncExitStack() as stack:
        upstream: dict[str, Any] = {"name": "feat"}
        if request.param == "stdio":
            upstream["command"] = [sys.executable, FEATURE_SERVER_PATH]
        else:
            run = run_http_server if request.param == "http" else run_sse_server
            upstream["url"] = await stack.enter_async_context(run(feature_server()[0]))
            if request.param == "sse":
                upstream["transport"] = "sse"
        gw = await start_gateway({"upstreams": [upstream], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies)},
                                  "decision_log": {"path": str(tmp_path / "decisions.jsonl")}})
        yield f"{gw.mcp}/feat"


async def test_two_stateless_clients_with_one_token_each_get_their_own_progress(feat_url: str) -> None:
    seen: dict[str, list[str]] = {"A": [], "B": []}

    def recorder(tag: str) -> Any:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen[tag].append(str(message))
        return on_progress

    async with sdk_client(feat_url, mode="auto") as a, sdk_client(feat_url, mode="auto") as b:
        # Both calls meet inside the server before reporting; both clients send progress token 1.
        results = await asyncio.wait_for(asyncio.gather(*(
            client.call_tool("overlap", {"tag": tag, "group": "g", "parties": 2, "steps": 5},
                             progress_callback=recorder(tag))
            for client, tag in ((a, "A"), (b, "B")))), 30)
    assert [r.content[0].text for r in results] == ["A", "B"]  # type: ignore[union-attr]
    for tag in ("A", "B"):  # (on the old code one client got none, or both, of the notifications)
        assert sorted(seen[tag]) == [f"{tag} {n}" for n in range(1, 6)], seen
