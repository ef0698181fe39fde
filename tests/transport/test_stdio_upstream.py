"""stdio upstream supervision: crash and restart, shared session, routing, environment, real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.common import never_sent
from gateway.transport.stdio import StdioUpstream
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.support.servers import stdio_command
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually, is_log, text_of


@pytest.fixture
async def features_stdio() -> AsyncIterator[StdioUpstream]:
    upstream = StdioUpstream(UpstreamConfig(name="features", command=(sys.executable, FEATURE_SERVER_PATH),
                                            timeout_s=20))
    await upstream.start()
    yield upstream
    await upstream.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_killed_mid_call_fails_at_once_restarts_and_serves_again(features_stdio: StdioUpstream) -> None:
    inbox = Inbox()
    session = await features_stdio.connect(CLIENT_CAPS, inbox)
    first_pid = features_stdio.pid
    assert first_pid is not None and features_stdio.health().restarts == 0
    hanging = asyncio.create_task(session.request(call("hang"), timeout=600))
    other = asyncio.create_task(session.request(call("hang", request_id=2), timeout=600))
    await inbox.wait_for(lambda m: sum(map(is_log("hanging"), inbox.messages)) == 2)  # both calls are running
    os.kill(first_pid, signal.SIGKILL)
    for task in (hanging, other):
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(task, 15)  # bounded only to fail the test instead of hanging it
        assert info.value.reason == "upstream_unavailable"
    await eventually(lambda: features_stdio.health().ready)
    health = features_stdio.health()
    assert health.restarts == 1 and features_stdio.pid not in (None, first_pid)
    response = await session.request(call("echo", {"value": "again"}))  # the same view works on the new child
    assert text_of(response) == "again"


async def test_crashing_tool_is_unavailable_not_a_hang(features_stdio: StdioUpstream) -> None:
    session = await features_stdio.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("crash"), timeout=600)
    assert info.value.reason == "upstream_unavailable"
    await eventually(lambda: features_stdio.health().ready)
    assert features_stdio.health().restarts >= 1


async def test_one_child_shared_by_all_sessions(features_stdio: StdioUpstream) -> None:
    inbox_b = Inbox()
    holder: dict[str, Any] = {}
    inbox_a = Inbox(lambda: holder.get("a"))
    a = holder["a"] = await features_stdio.connect(CLIENT_CAPS, inbox_a)
    b = await features_stdio.connect(CLIENT_CAPS, inbox_b)
    pid = features_stdio.pid
    assert a.initialize_result == b.initialize_result and a.initialize_result["serverInfo"]["name"] == "features"
    # same caller ids from two sessions at once: each gets its own answer
    ra, rb = await asyncio.gather(a.request(call("echo", {"value": "A"}, request_id=1)),
                                  b.request(call("echo", {"value": "B"}, request_id=1)))
    assert text_of(ra) == "A" and text_of(rb) == "B" and ra["id"] == rb["id"] == 1
    # a server→client request goes to the session whose call is in flight (a), never to b
    assert text_of(await a.request(call("sample", {"prompt": "hi"}))) == "sampled answer"
    assert "sampling/createMessage" in inbox_a.methods() and "sampling/createMessage" not in inbox_b.methods()
    # list_changed concerns everyone
    await b.request(call("change_tools"))
    for inbox in (inbox_a, inbox_b):
        await inbox.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed")
    assert features_stdio.pid == pid and features_stdio.health().restarts == 0
    await a.close()
    with pytest.raises(GatewayError):
        await a.request(call("echo", {"value": "closed"}))
    assert text_of(await b.request(call("echo", {"value": "still"}))) == "still"


async def test_child_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMS_TEST_SECRET", "do-not-leak")
    upstream = StdioUpstream(UpstreamConfig(name="env", command=(sys.executable, FEATURE_SERVER_PATH),
                                            env={"GIVEN": "yes"}))
    await upstream.start()
    try:
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        for name, expected in (("CUSTOMS_TEST_SECRET", "<unset>"), ("GIVEN", "yes"), ("PATH", os.environ["PATH"])):
            assert text_of(await session.request(call("env", {"name": name}))) == expected
    finally:
        await upstream.stop()


async def test_stderr_is_logged_and_stop_terminates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="customs.upstream.chatty")
    upstream = StdioUpstream(UpstreamConfig(name="chatty", command=(sys.executable, FEATURE_SERVER_PATH)))
    await upstream.start()
    await upstream.connect(CLIENT_CAPS, Inbox())
    await eventually(lambda: any(r.name == "customs.upstream.chatty" and "feature server starting" in r.getMessage()
                                 for r in caplog.records))
    pid = upstream.pid
    assert pid is not None
    await upstream.stop()
    assert not alive(pid)
    health = upstream.health()
    assert not health.ready and health.detail == "stopped"
    with pytest.raises(GatewayError) as info:
        await upstream.connect(CLIENT_CAPS, Inbox())
    assert info.value.reason == "upstream_unavailable"


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Any) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, sys, runpy\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "sys.stdin = open('/dev/null')\n"  # not even stdin EOF makes it leave: it keeps serving nothing
        "import time\n"
        "import json\n"
        "line = sys.__stdin__.readline()\n"
        "req = json.loads(line)\n"
        "print(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'result': {'protocolVersion': '2025-11-25',"
        " 'capabilities': {}, 'serverInfo': {'name': 'stubborn', 'version': '1'}}}), flush=True)\n"
        "while True:\n    time.sleep(1)\n")
    upstream = StdioUpstream(UpstreamConfig(name="stubborn", command=(sys.executable, str(script))), grace_s=0.5)
    await upstream.start()
    await upstream.connect(CLIENT_CAPS, Inbox())
    pid = upstream.pid
    assert pid is not None
    await upstream.stop()
    assert not alive(pid)


async def test_command_that_cannot_start_opens_the_circuit() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="missing", command=("/nonexistent/mcp-server",), timeout_s=0.5),
                             breaker_threshold=2, breaker_cooldown_s=600, restart_cap_s=0.05)
    await upstream.start()
    try:
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.reason == "upstream_unavailable"
        await eventually(lambda: upstream.breaker.is_open)
        health = await upstream.probe()
        assert not health.ready and "circuit open" in health.detail and health.restarts >= 2
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())  # fails fast, no waiting for readiness
        assert info.value.data == {"circuit": "open", "upstream": "missing"}  # named, as other upstream errors
    finally:
        await upstream.stop()


async def test_open_circuit_closes_by_itself_when_the_child_starts_again(tmp_path: Any) -> None:
    """Unlike HTTP, no trial call is needed: the supervisor keeps restarting the child, and its first
    successful initialize closes the circuit, so readiness turns green with no client traffic."""
    marker = tmp_path / "may-start"
    script = tmp_path / "flaky.py"
    script.write_text("import os, runpy, sys\n"
                      f"if not os.path.exists({str(marker)!r}):\n    sys.exit(3)\n"
                      "sys.argv = ['servers', 'inventory']\n"
                      "runpy.run_module('gateway.demo.servers', run_name='__main__')\n")
    upstream = StdioUpstream(UpstreamConfig(name="flaky", command=(sys.executable, str(script)), timeout_s=10),
                             breaker_threshold=2, breaker_cooldown_s=600, restart_cap_s=0.05)
    await upstream.start()
    try:
        await eventually(lambda: upstream.breaker.is_open)
        health = await upstream.probe()
        assert not health.ready and "circuit open" in health.detail
        marker.touch()
        await eventually(lambda: upstream.health().ready)  # only probes in between, no connect() or call
        assert (await upstream.probe()).ready and not upstream.breaker.is_open
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        assert text_of(await session.request(call("get_stock", {"sku": "widget"}))) == "widget: 42 in stock"
    finally:
        await upstream.stop()


async def test_open_circuit_still_says_why_the_child_fails(tmp_path: Any) -> None:
    """A child that exits at once opens the circuit within a second; readiness must keep the reason."""
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    upstream = StdioUpstream(UpstreamConfig(name="exits", command=(sys.executable, str(script)), timeout_s=10),
                             breaker_threshold=2, breaker_cooldown_s=600, restart_cap_s=0.05)
    await upstream.start()
    try:
        await eventually(lambda: upstream.breaker.is_open)
        detail = (await upstream.probe()).detail
        assert "circuit open" in detail and "child exited with code 3" in detail, detail
    finally:
        await upstream.stop()


async def test_a_child_that_exits_before_initialize_says_its_exit_code(tmp_path: Any) -> None:
    """What /readyz shows of a child that dies at start names its exit code (a wrapper's 127, a crash's 1): it said
    only `initialize failed: upstream process exited`, also once the circuit opened on it."""
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    upstream = StdioUpstream(UpstreamConfig(name="exits", command=(sys.executable, str(script)), timeout_s=10),
                             breaker_threshold=3, breaker_cooldown_s=600, restart_cap_s=0.05)
    await upstream.start()
    try:
        await eventually(lambda: upstream.breaker.is_open)
        detail = (await upstream.probe()).detail
        assert detail.endswith("last: initialize failed: child exited with code 3"), detail
        assert not upstream.health().ready
    finally:
        await upstream.stop()


async def test_child_that_fails_initialize_is_not_ready(tmp_path: Any) -> None:
    script = tmp_path / "bad.py"
    script.write_text("import sys, json\nreq = json.loads(sys.stdin.readline())\n"
                      "print(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'error': {'code': -1, 'message': 'no'}}),"
                      " flush=True)\nsys.stdin.read()\n")
    upstream = StdioUpstream(UpstreamConfig(name="bad", command=(sys.executable, str(script)), timeout_s=0.5),
                             breaker_threshold=100, restart_cap_s=0.05)
    await upstream.start()
    try:
        await eventually(lambda: "initialize failed" in upstream.health().detail or upstream.health().restarts > 0)
        assert not upstream.health().ready
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.reason == "upstream_unavailable"
    finally:
        await upstream.stop()


async def test_demo_inventory_over_stdio() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="inventory", command=tuple(stdio_command("inventory"))))
    await upstream.start()
    try:
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        assert upstream.initialize_result["serverInfo"]["name"] == "inventory"
        response = await session.request(call("get_stock", {"sku": "widget"}))
        assert text_of(response) == "widget: 42 in stock"
        assert (await upstream.probe()).ready
    finally:
        await upstream.stop()


async def test_third_party_mcp_server_time_over_stdio() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="time", command=(sys.executable, "-m", "mcp_server_time")))
    await upstream.start()
    try:
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        listed = await session.request({"jsonrpc": "2.0", "id": "l", "method": "tools/list"})
        assert "get_current_time" in {t["name"] for t in listed["result"]["tools"]}
        response = await session.request(call("get_current_time", {"timezone": "UTC"}, request_id="t"))
        assert response["id"] == "t" and '"timezone": "UTC"' in text_of(response)
        bad = await session.request(call("get_current_time", {"timezone": "Not/AZone"}))
        assert bad["result"]["isError"] is True or "error" in bad
    finally:
        await upstream.stop()


async def test_a_restarted_child_s_tools_are_announced_as_changed(features_stdio: StdioUpstream) -> None:
    """A crashed child comes back as whatever its command now starts (`npx`/`uvx` may fetch a new version):
    as after a streamable HTTP upstream's restart (its session expired), every session is told
    tools/list_changed, so its tools are listed (and their pins checked) again before the next call runs."""
    inbox = Inbox()
    session = await features_stdio.connect(CLIENT_CAPS, inbox)
    assert not [m for m in inbox.methods() if m == "notifications/tools/list_changed"]
    with pytest.raises(GatewayError):
        await session.request(call("crash"), timeout=600)
    await inbox.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed", within=15)
    assert features_stdio.health().restarts == 1 and features_stdio.health().ready


async def test_a_call_to_a_stopped_child_is_known_never_sent() -> None:
    """A call refused before anything was written to the child (the upstream stopped, its session closed) is
    `never_sent`: an approval it used is handed back and a task's share given back, as for a refused HTTP
    connection (it used to count as a call that may have run)."""
    upstream = StdioUpstream(UpstreamConfig(name="features", command=(sys.executable, FEATURE_SERVER_PATH),
                                            timeout_s=20))
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    second = await upstream.connect(CLIENT_CAPS, Inbox())
    await second.close()
    with pytest.raises(GatewayError) as closed:
        await second.request(call("echo", {"text": "x"}))
    await upstream.stop()
    with pytest.raises(GatewayError) as stopped:
        await session.request(call("echo", {"text": "x"}))
    assert closed.value.reason == stopped.value.reason == "upstream_unavailable"
    assert never_sent(closed.value) and never_sent(stopped.value), (closed.value, stopped.value)
