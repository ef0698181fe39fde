"""`mcp.client.operation.duration` carries the conventions' recommended transport attributes of the upstream.

The MCP conventions recommend `network.transport`, `network.protocol.name`/`.version`, `server.address` and
`server.port` on the client metric as on the CLIENT span. They depend on the upstream alone, so each series
gets them when it is first made, not per call; and `mcp.protocol.version`, the revision the upstream negotiated
(recommended too; the agent's may differ, so it is the upstream session's). Both kinds of upstream request are
checked: the pipeline's forwarded call and the router's own (the tools/list fanned out upstream).
Real gateway, real SDK streamable-HTTP upstream.
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
METRIC = "mcp_client_operation_duration_seconds"


async def test_client_operation_series_name_the_upstreams_transport(start_gateway: StartGateway,
                                                                    permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                       "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gateway.mcp) as client:
            await client.list_tools()
            await client.call_tool("inventory__get_stock", {"sku": "A-1"})
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    port = url.split(":")[2].split("/")[0]
    counts = [line for line in text.splitlines() if line.startswith(f"{METRIC}_count{{")]
    methods = {m for line in counts for m in ("tools/list", "tools/call") if f'mcp_method_name="{m}"' in line}
    assert methods == {"tools/list", "tools/call"}, counts
    for line in counts:
        for label in ('network_transport="tcp"', 'network_protocol_name="http"', 'network_protocol_version="1.1"',
                      'server_address="127.0.0.1"', f'server_port="{port}"', 'customs_upstream="inventory"'):
            assert label in line, (label, line)
        assert re.search(r'mcp_protocol_version="\d{4}-\d{2}-\d{2}"', line), line  # (missing on the old code)
