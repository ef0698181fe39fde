"""The gateway as a real process: SIGTERM drains and exits 0, SIGHUP reloads policies, and two replicas
on one Redis share one rate budget.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.approvals.redis import RedisApprovalStore
from tests.hardening.conftest import ANON, RawClient, Recorder, one_shape_policies, poll, reason
from tests.support.otlp import OtlpReceiver
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio

APPROVAL_POLICIES = """
@id("lookup-and-slow")
permit (principal, action == Action::"call_tool", resource in Server::"rec")
when { resource.read_only };

@id("transfer-needs-approval")
permit (principal, action == Action::"call_tool", resource == Tool::"rec/transfer")
when { context.approval == "granted" };
"""


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def test_sigterm_drains_in_flight_calls_keeps_approvals_and_exits_0(
        spawn_gateway: Any, upstream: tuple[Recorder, str], redis_server: RedisServer,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    recorder, url = upstream
    policies = one_shape_policies(tmp_path / "policies")
    (policies / "one.cedar").write_text(APPROVAL_POLICIES)
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                              "policies": {"dir": str(policies), "watch": False},
                              "store": {"redis": {"url": redis_server.url}}, "approvals": {"wait_s": 0},
                              "listen": {"drain_timeout_s": 30}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    _, _, body = await client.call("rec__transfer", {"amount": 5})
    assert reason(body) == "approval_pending", body
    approval_id = body["error"]["data"]["approval_id"]

    in_flight = asyncio.create_task(client.call("rec__slow", {}, request_id=2))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    gw.proc.send_signal(signal.SIGTERM)
    port = int(gw.url.rsplit(":", 1)[1])
    await poll(lambda: _refuses_connections(port), what="the listener to close")  # stops accepting at once
    assert not in_flight.done() and gw.proc.poll() is None  # ...but the call in flight is not cut off
    recorder.release.set()  # type: ignore[union-attr]
    status, _, body = await asyncio.wait_for(in_flight, 15)
    assert status == 200 and body["result"]["content"][0]["text"] == "ran slow", body
    await poll(lambda: gw.proc.poll() is not None, timeout=20, what="the process to exit")
    assert gw.proc.returncode == 0, gw.log()
    assert "draining" in gw.log()

    store = RedisApprovalStore.from_url(redis_server.url)
    try:
        item = await store.get(approval_id)
        assert item.pending  # a pending approval survives the shutdown for the next replica to serve
    finally:
        await store.close()
    assert [name for name, _ in recorder.calls] == ["slow"]  # the held transfer never ran


async def test_sigterm_drain_deadline_ends_a_call_that_does_not_finish(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    recorder, url = upstream
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                              "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
                              "listen": {"drain_timeout_s": 0.5}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    in_flight = asyncio.create_task(client.call("rec__slow", {}))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    gw.proc.send_signal(signal.SIGTERM)
    await poll(lambda: gw.proc.poll() is not None, timeout=20, what="exit after the drain deadline")
    assert gw.proc.returncode == 0, gw.log()
    try:
        await asyncio.wait_for(in_flight, 10)  # the client sees the connection end, not a hang
    except aiohttp.ClientError:
        pass


async def test_a_call_past_the_drain_deadline_is_answered_shutting_down_and_the_exit_keeps_the_deadline(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """At `listen.drain_timeout_s` aiohttp only marked the request's body as failed and waited the whole timeout
    again before cancelling the handler, so a call that did not finish held the exit to twice the deadline (a
    20 s drain took 40 s, past a 30 s container grace period) and its client saw the connection cut. The calls
    still in flight are now withdrawn at the deadline: each is answered `shutting_down` and the exit follows."""
    recorder, url = upstream
    drain = 3.0
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url, "timeout_s": 60}], "identity": ANON,
                              "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
                              "listen": {"drain_timeout_s": drain}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    in_flight = asyncio.create_task(client.call("rec__slow", {}))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    gw.proc.send_signal(signal.SIGTERM)
    status, _, body = await asyncio.wait_for(in_flight, 4 * drain)
    answered = loop.time() - sent
    assert status == 503 and reason(body) == "shutting_down", body  # (was: the connection cut, no answer)
    await poll(lambda: gw.proc.poll() is not None, timeout=20, what="the process to exit")
    assert gw.proc.returncode == 0, gw.log()
    assert drain - 0.5 < answered < 2 * drain - 0.5, answered  # at the deadline, not twice it


async def test_sighup_reloads_policies(spawn_gateway: Any, upstream: tuple[Recorder, str],
                                       http: aiohttp.ClientSession, tmp_path: Path) -> None:
    recorder, url = upstream
    policies = one_shape_policies(tmp_path / "policies")
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                              "policies": {"dir": str(policies), "watch": False}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    assert reason((await client.call("rec__lookup", {"sku": "gadget"}))[2]) == "unknown_tool"
    (policies / "one.cedar").write_text(
        '@id("any-lookup")\npermit (principal, action == Action::"call_tool", resource == Tool::"rec/lookup");\n')
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "SIGHUP: policies reloaded" in gw.log(), what="the reload")
    status, _, body = await client.call("rec__lookup", {"sku": "gadget"})
    assert status == 200 and "result" in body, body
    # A broken file on the next SIGHUP keeps the set in force.
    (policies / "broken.cedar").write_text("permit (principal, action, resource) when { nope };\n")
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "kept (reload failed)" in gw.log(), what="the failed reload")
    assert "result" in (await client.call("rec__lookup", {"sku": "gadget"}))[2]
    assert gw.proc.poll() is None
    assert [args for _, args in recorder.calls] == [{"sku": "gadget"}, {"sku": "gadget"}]


async def test_sighup_validates_the_config_file_and_names_sections_needing_a_restart(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    _, url = upstream
    policies = one_shape_policies(tmp_path / "policies")
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                              "policies": {"dir": str(policies), "watch": False}})
    text = gw.config_path.read_text()
    gw.config_path.write_text(text + "\nnot_a_section: 1\n")
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "is invalid, nothing changed" in gw.log(), what="the rejected config")
    assert "not_a_section: unknown key" in gw.log()
    gw.config_path.write_text(text + "\nlimits: {per_principal: {rate_per_s: 5}}\n")
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "config sections limits changed" in gw.log(), what="the restart notice")
    client = RawClient(http, gw.mcp)
    await client.initialize()
    assert "result" in (await client.call("rec__lookup", {"sku": "widget"}))[2]


async def test_two_replicas_share_one_rate_budget_through_redis(
        spawn_gateway: Any, upstream: tuple[Recorder, str], redis_server: RedisServer,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    recorder, url = upstream
    config: dict[str, Any] = {
        "upstreams": [{"name": "rec", "url": url}], "identity": ANON,
        "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
        "store": {"redis": {"url": redis_server.url}},
        "limits": {"per_principal": {"rate_per_s": 0.01, "burst": 4}},
    }
    a, b = await asyncio.gather(spawn_gateway(config, name="a"), spawn_gateway(config, name="b"))
    clients = [RawClient(http, a.mcp), RawClient(http, b.mcp)]
    for client in clients:
        await client.initialize()
    answers = [await clients[i % 2].call("rec__lookup", {"sku": "widget"}, request_id=i) for i in range(6)]
    ok = [i for i, (status, _, body) in enumerate(answers) if status == 200 and "result" in body]
    assert ok == [0, 1, 2, 3], answers  # one budget of 4, spent on both replicas
    for status, headers, body in answers[4:]:
        assert status == 429 and reason(body) == "rate_limited", body
        assert body["error"]["data"]["retry_after_s"] >= 1
        assert int(headers["Retry-After"]) == body["error"]["data"]["retry_after_s"]
    assert len(recorder.calls) == 4


async def test_sigterm_with_tracing_exports_the_last_spans_and_leaves_no_exporter_behind(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    _, url = upstream
    async with OtlpReceiver() as otlp:
        gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
                                  "telemetry": {"traces": {"endpoint": otlp.url}}})
        children = _children(gw.proc.pid)
        assert children, "the span exporter process runs beside the gateway"
        client = RawClient(http, gw.mcp)
        await client.initialize()
        status, _, body = await client.call("rec__lookup", {"sku": "widget"})
        assert status == 200 and "result" in body, body
        gw.proc.send_signal(signal.SIGTERM)  # well before the exporter's next batch is due
        await poll(lambda: gw.proc.poll() is not None, timeout=20, what="the process to exit")
        assert gw.proc.returncode == 0, gw.log()
        await otlp.wait_for_span(lambda s: s.name == "tools/call rec__lookup")
        await poll(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), what="the exporter to exit")


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found
