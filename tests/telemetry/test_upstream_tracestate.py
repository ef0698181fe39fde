"""The trace context an upstream gets is the gateway's, whole: its `_meta` and its HTTP headers carry the same
`traceparent` and `tracestate`, and never a `tracestate` the gateway did not adopt (issue 6, propagation).

The forward stage copies the agent's `params._meta` and writes the CLIENT span's context over it; a context with no
trace state wrote no `tracestate`, so the agent's own stayed beside the gateway's `traceparent`: a malformed one the
gateway had dropped, or (with `traces.trust_inbound: false`) the state of a trace the gateway refused to join.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import SeenRequest, run_http_server
from tests.telemetry.meta_echo_server import meta_echo_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
AGENT_TRACE, AGENT_SPAN = "7bf92f3577b34da6a3ce929d0e0e4736", "30f067aa0ba902b7"


@pytest.mark.parametrize(("trust", "tracestate"), [(True, "bad member,x=1"), (False, "vendor=agent-chosen")])
async def test_upstream_meta_and_headers_carry_one_context(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                           permissive_policies: Path, trust: bool,
                                                           tracestate: str) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(meta_echo_server(), requests=seen) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "echo", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url, "trust_inbound": trust}},
        })
        async with sdk_client(gateway.mcp) as client:
            result = await client.call_tool("echo__seen_meta", {}, meta={  # type: ignore[arg-type]
                "traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01", "tracestate": tracestate})
    upstream_meta = json.loads(result.content[0].text)  # type: ignore[union-attr]
    call = [r for r in seen if r.method == "POST" and r.headers.get("traceparent") == upstream_meta["traceparent"]]
    assert len(call) == 1, [(r.method, r.headers.get("traceparent")) for r in seen]
    assert upstream_meta.get("tracestate") == call[0].headers.get("tracestate") is None

