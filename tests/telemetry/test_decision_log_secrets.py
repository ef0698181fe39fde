"""Names an agent sends are redacted in the decision log as they are on spans: a token in a resource URI, or a
token sent as a tool name that does not exist, is `[REDACTED]` in the record (`tool` and the replay snapshot)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.telemetry.test_span_status_secrets import document_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
URI_TOKEN = "ghp_" + "a1B2" * 9
NAME_TOKEN = "ghp_" + "c3D4" * 9


async def test_tokens_in_names_an_agent_sends_are_redacted_in_the_decision_log(
        start_gateway: StartGateway, permissive_policies: Path, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(document_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "docs", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
            "decision_log": {"path": str(log)},
        })
        async with sdk_client(gateway.mcp) as client:
            await client.read_resource(f"customs://docs/doc://{URI_TOKEN}")
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(NAME_TOKEN, {})
        await gateway.gateway.parts.observability.log.close()
    text = log.read_text()
    assert URI_TOKEN not in text and NAME_TOKEN not in text, text
    records = {r["method"]: r for r in map(json.loads, text.splitlines()) if r["type"] == "decision"}
    read = records["resources/read"]
    assert read["tool"] == "doc://[REDACTED]" and read["outcome"] == "ok"
    assert read["authz_input"]["tool"]["name"] == "doc://[REDACTED]"
    probe = records["tools/call"]
    assert (probe["tool"], probe["not_found"], probe["reason"]) == ("[REDACTED]", True, "unknown_tool")
