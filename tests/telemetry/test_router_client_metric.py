"""`mcp.client.operation.duration` for the upstream requests the router makes itself, not only the pipeline's.

The conventions' client metric times every MCP request a client sends. Besides the pipeline's calls
(tools/call, prompts/get, resources/read) the gateway sends its upstreams lists (every page), completions,
subscriptions and logging/setLevel; each is timed as well, with `customs.upstream`, and a JSON-RPC error
answer gives `error.type` and `rpc.response.status_code` (the upstream's code). Tracing on or off alike:
the metric must not depend on spans being recorded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def broken_prompts() -> Server[Any]:
    """An upstream whose prompts/list answers a JSON-RPC error."""
    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        raise MCPError(code=-32603, message="prompt store down")

    return Server("broken", on_list_prompts=list_prompts)


def series(text: str, method: str, upstream: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("mcp_client_operation_duration_seconds_count{")
            and f'mcp_method_name="{method}"' in line and f'customs_upstream="{upstream}"' in line]


@pytest.mark.parametrize("tracing", [True, False])
async def test_the_routers_own_upstream_requests_are_timed(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                           permissive_policies: Path, tracing: bool) -> None:
    async with run_http_server(inventory_server()) as inventory, run_http_server(broken_prompts()) as broken:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory}, {"name": "broken", "url": broken}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}} if tracing else {},
        })
        async with sdk_client(gateway.mcp) as client:
            await client.list_tools()
            try:
                await client.list_prompts()
            except MCPError:
                pass  # how the aggregated list answers a failing upstream is not this test's concern
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    listed = series(text, "tools/list", "inventory")
    assert len(listed) == 1 and listed[0].endswith(" 1.0") and not re.search(r'error_type="[^"]', listed[0]), listed
    failed = series(text, "prompts/list", "broken")
    assert len(failed) == 1, failed
    assert 'error_type="-32603"' in failed[0] and 'rpc_response_status_code="-32603"' in failed[0], failed
    assert len(series(text, "prompts/list", "inventory")) == 1


async def test_identify_is_a_timed_stage_refusals_included(start_gateway: StartGateway, permissive_policies: Path,
                                                           tmp_path: Path) -> None:
    # Issue 6 asks for latency per stage; identify (token checks, a JWKS fetch) is the first of them.
    issuer = TestIssuer(tmp_path)
    async with run_http_server(inventory_server()) as inventory:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)},
        })
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        headers = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer not-a-token"}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.mcp, json=body, headers=headers) as refused:
                assert refused.status == 401
            async with http.get(f"{gateway.url}/metrics") as resp:
                text = await resp.text()
    counts = [line for line in text.splitlines()
              if line.startswith("customs_stage_duration_seconds_count{") and 'stage="identify"' in line]
    assert len(counts) == 1 and counts[0].endswith(" 1.0"), counts
