"""The gateway's task hint (`_meta["customs/task"]`, docs/credentials.md "Tasks") never reaches an upstream: a call's
credential stage takes it out, and so do the router's own requests on an agent's behalf (lists on
`/mcp/{upstream}`), which it used to forward with the agent's other `_meta` keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.contract import Agent
from tests.support.servers import run_http_server
from tests.telemetry.meta_echo_server import meta_echo_server

META = {"customs/task": "job-1", "vendor/other": "kept"}


async def test_task_hint_is_not_sent_upstream_on_lists_or_calls(start_gateway: Any, permissive_policies: Path) -> None:
    async with run_http_server(meta_echo_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "echo", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        agent = await Agent(http, f"{gw.mcp}/echo", None).open()
        status, listed, _ = await agent.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                              "params": {"_meta": META}})
        assert status == 200, listed
        seen_by_list = json.loads(next(t["description"] for t in listed["result"]["tools"] if t["name"] == "seen_meta"))
        status, called, _ = await agent.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                              "params": {"name": "seen_meta", "arguments": {}, "_meta": META}})
        assert status == 200, called
        seen_by_call = json.loads(called["result"]["content"][0]["text"])
    for seen in (seen_by_list, seen_by_call):
        assert "customs/task" not in seen and seen.get("vendor/other") == "kept", seen
