"""Tracing off (no `telemetry.traces`, no OTEL_* variables) through a real gateway: nothing is started, no span made."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.servers import inventory_server
from gateway.telemetry.spans import LightSpan
from gateway.telemetry.tracing import Telemetry
from tests.conftest import RunningGateway
from tests.support.feature_server import feature_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server


def children() -> set[int]:
    """This process's child processes (an exporter would be one), but decision-log writers (every gateway has one)."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found.update(int(pid) for pid in listing.read().split())
    return {pid for pid in found if b"gateway.telemetry.decision_writer" not in cmdline(pid)}


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:  # gone since it was listed
        return b""


async def test_a_gateway_without_telemetry_starts_no_exporter_and_builds_no_span(
        start_gateway: Callable[[dict[str, Any]], Awaitable[RunningGateway]], permissive_policies: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    made: list[str] = []
    real_new = Telemetry._new

    def counting_new(self: Telemetry, name: str, *args: Any, **kwargs: Any) -> LightSpan:
        made.append(name)
        return real_new(self, name, *args, **kwargs)

    monkeypatch.setattr(Telemetry, "_new", counting_new)  # the one place a gateway span is made
    before_children, before_threads = children(), {t.name for t in threading.enumerate()}
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with run_http_server(inventory_server()) as inventory_url, run_http_server(feature_server()[0]) as feat:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory_url}, {"name": "feat", "url": feat}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gateway.mcp, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}) as c:
            result = await c.call_tool("inventory__get_stock", {"sku": "widget"})
            # An upstream's progress and log lines during a call, relayed with no span either.
            relayed = await c.call_tool("feat__progress", {"steps": 2}, progress_callback=on_progress)
        assert not result.is_error and not relayed.is_error and progress == [1, 2]
        telemetry = gateway.gateway.parts.observability.telemetry
        assert not telemetry.enabled and telemetry.provider is None and telemetry._shipper is None
        assert made == []
        assert children() - before_children == set()  # no exporter child (the upstream runs in this process)
        new_threads = {t.name for t in threading.enumerate()} - before_threads
        assert not [n for n in new_threads if "span" in n.lower() or "export" in n.lower() or "otel" in n.lower()], \
            new_threads
