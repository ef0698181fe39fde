"""`mcp.server.session.duration`: how long each MCP session with an agent lasted (the conventions' metric).

A session made by `initialize` and ended by the client's DELETE is one point, in seconds, with the
conventions' buckets, `mcp.protocol.version` (the version the session speaks) and the transport
(`network.transport=tcp`, `network.protocol.name=http`); a session that ends normally has no `error.type`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
METRIC = "mcp_server_session_duration_seconds"


async def test_an_ended_session_is_one_duration_point(start_gateway: StartGateway,
                                                      permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
        })
        async with sdk_client(gateway.mcp) as client:
            await client.list_tools()
        # The SDK client DELETEs its session on the way out, and the gateway ends it before answering.
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    assert f"# TYPE {METRIC} histogram" in text, "no mcp.server.session.duration histogram"
    counts = [line for line in text.splitlines() if line.startswith(f"{METRIC}_count{{")]
    assert len(counts) == 1 and counts[0].endswith("} 1.0"), counts
    assert re.search(r'mcp_protocol_version="\d{4}-\d{2}-\d{2}"', counts[0]), counts[0]
    for label in ('network_transport="tcp"', 'network_protocol_name="http"'):
        assert label in counts[0], (label, counts[0])
    assert "error_type" not in counts[0]
    bounds = re.findall(rf'{METRIC}_bucket{{[^}}]*le="([^"]+)"', text)
    assert [float(b) for b in bounds] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300,
                                          float("inf")], bounds
