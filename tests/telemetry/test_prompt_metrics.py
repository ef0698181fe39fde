"""prompts/get in the MCP operation duration metrics: `gen_ai.prompt.name`, as the conventions require."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def prompt_server() -> MCPServer:
    server = MCPServer("prompts")

    @server.prompt()
    def greet(name: str) -> str:
        return f"Hello {name}"

    return server


def series(text: str, metric: str, method: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith(metric) and f'mcp_method_name="{method}"' in line]


async def test_prompts_get_durations_name_the_prompt(start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with run_http_server(prompt_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "mem", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
        })
        async with sdk_client(gateway.mcp) as client:
            result = await client.get_prompt("mem__greet", {"name": "ada"})
        assert "Hello ada" in str(result.messages[0].content)
        text = gateway.gateway.parts.observability.metrics.prometheus_text().decode()
    server = series(text, "mcp_server_operation_duration_seconds_count", "prompts/get")
    client = series(text, "mcp_client_operation_duration_seconds_count", "prompts/get")
    assert len(server) == 1 and 'gen_ai_prompt_name="mem__greet"' in server[0], server  # the agent's name
    assert len(client) == 1 and 'gen_ai_prompt_name="greet"' in client[0], client  # the upstream's own
    assert re.search(r"\} 1\.0$", server[0]) and re.search(r"\} 1\.0$", client[0])
