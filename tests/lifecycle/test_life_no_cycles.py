"""A finished call leaves no reference cycle behind: its objects are freed by reference counting.

A cycle per call (a closure over the call's context stored in that context, say) leaves every call's
objects, and all they reference, to the cyclic garbage collector; at 50 concurrent clients its passes
cost the gateway about a fifth of its throughput. This test fails on such a cycle.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.conftest import Upstreams, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.tokens import TestIssuer


@pytest.mark.parametrize("traced", [False, True], ids=["tracing-off", "tracing-on"])
async def test_allowed_calls_leave_no_cyclic_garbage(start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer,
                                                      policies: Path, tmp_path: Path, traced: bool) -> None:
    async with OtlpReceiver() as otlp:
        extra: dict[str, Any] = {"decision_log": {"path": str(tmp_path / "decisions.jsonl")}}
        if traced:
            extra["telemetry"] = {"traces": {"endpoint": otlp.url}}
        gw = await start_gateway(gateway_config(upstreams, issuer, policies, **extra))
        left = await leftovers(gw, issuer)
        await gw.runner.cleanup()  # before the receiver goes: the last spans are exported, not refused
    assert left == [], f"per-call objects only the cyclic collector could free: {left}"


async def leftovers(gw: Any, issuer: TestIssuer) -> list[str]:
    """Types of per-call objects the cyclic collector finds after calls made with it switched off."""
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert (await client.call_tool("inventory__get_stock", {"sku": "warm-up"})).content
        gc.collect()
        gc.disable()  # from here on only reference counting frees anything
        try:
            for i in range(20):
                assert not (await client.call_tool("inventory__get_stock", {"sku": f"s-{i}"})).is_error
            for i in range(5):  # denied: the error travels with a traceback through the call's frames
                reason, _ = await reason_of(client.call_tool("payments__pay", {"account": "a", "amount": 1,
                                                                               "__expr": i}))
                assert reason == "unknown_tool"
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage, for the assert
            gc.collect()
            # Any object of the gateway's own types (the client in this process makes cycles of its own).
            left = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("gateway.")})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    return left
