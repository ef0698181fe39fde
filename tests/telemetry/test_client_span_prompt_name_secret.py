"""A token sent as a prompt name never reaches an exported span (issue 5/6 secret hygiene).

A prompt the upstream lists under a token's name is sent upstream and refused there (a required argument
missing; one it does not list answers unknown_prompt and is never sent). The SERVER span
names it only through the secret redactor (docs/tracing.md, *Names an agent makes up*); the CLIENT span to the
upstream kept `gen_ai.prompt.name` as sent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server
from tests.telemetry.test_span_status_secrets import document_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
NAME_TOKEN = "ghp_" + "e5F6" * 9


async def test_a_failed_prompt_names_no_token_on_the_client_span(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    upstream = document_server()

    def refused(topic: str) -> str:
        return topic

    upstream.prompt(name=NAME_TOKEN)(refused)
    async with run_http_server(upstream) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "docs", "url": url}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)}, "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(f"{gateway.mcp}/docs") as client:
            with pytest.raises(MCPError):
                await client.get_prompt(NAME_TOKEN, {})
        await gateway.gateway.parts.observability.telemetry.flush()
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "prompts/get")
    client_span = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "prompts/get")
    assert server.attributes["gen_ai.prompt.name"] == "[REDACTED]"  # the SERVER span already does
    assert NAME_TOKEN not in json.dumps(client_span.attributes, default=str), client_span.attributes
