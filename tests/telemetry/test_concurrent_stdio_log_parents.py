"""Log lines a shared stdio child (or a legacy SSE upstream) sends while one session has several calls live are not
put in a wrong call's trace (issue 6: "during a call ... the call's CLIENT span" must be the call that caused them).

The stdio wire does not say which request a `notifications/message` serves (gateway/transport/stdio_routes.py).
With one session owning every live call the transport hands each such line to the *latest* live call's handler,
and the SERVER span of the notification is parented on that call's CLIENT span: an SRE sees call N holding every
call's log lines and the others none. When the gateway cannot tell the call, the line must not be claimed by
one (a root span, or links to the live calls, as it does outside any call). A legacy SSE upstream's stream is one
channel too: its lines go to the most recently started request (InflightTable.route).

Real gateway, the real SDK feature server as a stdio child, a real SDK agent, the in-test OTLP receiver.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp_types as types

from tests.conftest import RunningGateway
from tests.support.feature_server import FEATURE_SERVER_PATH, feature_server
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_sse_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
CALLS = 3


def trace_of(i: int) -> str:
    return f"{i + 1:x}".rjust(32, "a")


async def test_a_log_line_of_one_call_is_never_in_another_calls_trace(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    await _three_calls_logging({"name": "f", "command": [sys.executable, FEATURE_SERVER_PATH]},
                               otlp, start_gateway, permissive_policies)


async def test_a_legacy_sse_upstreams_log_line_is_never_in_another_calls_trace(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    server, _ = feature_server()
    async with run_sse_server(server) as url:
        await _three_calls_logging({"name": "f", "url": url, "transport": "sse"}, otlp, start_gateway,
                                   permissive_policies)


async def _three_calls_logging(upstream: dict[str, Any], otlp: OtlpReceiver, start_gateway: StartGateway,
                               permissive_policies: Path) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    gateway = await start_gateway({
        "upstreams": [upstream],
        "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)},
        "telemetry": {"traces": {"endpoint": otlp.url}}})
    async with sdk_client(gateway.mcp, logging_callback=on_log) as client:
        results = await asyncio.gather(*[
            client.call_tool("f__overlap", {"tag": f"t{i}", "group": "g", "parties": CALLS, "steps": 2},
                             meta={"traceparent": f"00-{trace_of(i)}-{'b' * 16}-01"})
            for i in range(CALLS)])
    assert not any(r.is_error for r in results)
    await gateway.gateway.parts.observability.telemetry.flush()

    # Each call's trace has its own SERVER and CLIENT span (the calls themselves are parented right) ...
    for i in range(CALLS):
        await otlp.wait_for_span(lambda s, i=i: s.trace_id == trace_of(i) and s.kind == "CLIENT"
                                 and s.name == "tools/call overlap")
    # ... and the log lines the agent got name, in their _meta, the trace the gateway put them in.
    lines = [(str(p.data), (p.meta or {}).get("traceparent", "")) for p in logs if " log " in str(p.data)]
    assert len(lines) == 2 * CALLS, logs
    wrong = [(data, parent) for data, parent in lines
             if any(parent.startswith(f"00-{trace_of(j)}-") for j in range(CALLS) if f"t{j} " not in data)]
    assert wrong == [], f"log lines put in another call's trace: {wrong}"
