"""SIGHUP against an edited config file, on a real gateway process: what applies live and what is named
as needing a restart (docs/configuration.md, "Reloading").
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import free_port, with_port
from tests.hardening.conftest import ANON, RawClient, Recorder, one_shape_policies, poll, reason, recording_server
from tests.support.processes import stop_async
from tests.support.servers import run_http_server
from tests.support.tokens import generate_key

pytestmark = pytest.mark.asyncio
ANY_LOOKUP = '@id("any-lookup")\npermit (principal, action == Action::"call_tool", resource == Tool::"rec/lookup");\n'
RELOADED = "SIGHUP: policies reloaded"
KEPT = "SIGHUP: policies kept (reload failed)"


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async with run_http_server(recording_server(Recorder())) as url:
        yield url


def _edit(path: Path, **policies: Any) -> None:
    data = yaml.safe_load(path.read_text())
    data["policies"] = {**data["policies"], **policies}
    path.write_text(yaml.safe_dump(data))


async def _readyz_policies(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/readyz") as resp:
        detail: dict[str, Any] = (await resp.json())["checks"]["policies"]["detail"]
        return detail


async def _config_reloads(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """outcome -> count of customs.config.reloads, from /metrics."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {dict(re.findall(r'(\w+)="([^"]*)"', line))["customs_outcome"]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("customs_config_reloads_total{")}


def _config_reload_events(log_path: Path) -> list[dict[str, Any]]:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("type") == "config_reload"]


async def test_a_refused_sighup_is_counted_recorded_and_named_in_readyz_until_a_reload_succeeds(
        spawn_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": upstream_url}], "identity": ANON,
                              "policies": {"dir": str(one_shape_policies(tmp_path / "p")), "watch": False},
                              "decision_log": {"path": str(log_path)}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "\nnot_a_section: 1\n")
    before = time.time()
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: len(_config_reload_events(log_path)) == 1, what="the config_reload record")
    [event] = _config_reload_events(log_path)
    assert event["outcome"] == "error" and event["file"] == str(gw.config_path), event
    assert any("not_a_section: unknown key" in p for p in event["problems"]), event
    assert await _config_reloads(http, gw.url) == {"error": 1}
    async with http.get(f"{gw.url}/readyz") as resp:  # still ready: the running, valid config serves on
        ready = await resp.json()
        assert resp.status == 200 and ready["status"] == "ready", ready
    config = ready["checks"]["config"]
    assert config["ready"] is True and config["detail"]["reload_failures"] == 1, config
    refused = config["detail"]["last_error"]
    assert refused["file"] == str(gw.config_path) and before <= refused["at"] <= time.time(), refused
    assert any("not_a_section: unknown key" in p for p in refused["problems"]), refused
    assert "result" in (await client.call("rec__lookup", {"sku": "widget"}))[2]

    gw.config_path.write_text(good)  # fixed: accepted, counted, and the refusal no longer shown
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: len(_config_reload_events(log_path)) == 2, what="the second config_reload record")
    event = _config_reload_events(log_path)[1]
    assert event["outcome"] == "ok" and event["file"] == str(gw.config_path) and "problems" not in event, event
    assert await _config_reloads(http, gw.url) == {"error": 1, "ok": 1}
    async with http.get(f"{gw.url}/readyz") as resp:
        detail = (await resp.json())["checks"]["config"]["detail"]
    assert detail["last_error"] is None and detail["reloads"] == 2 and detail["reload_failures"] == 1, detail
    assert "result" in (await client.call("rec__lookup", {"sku": "widget"}))[2]


async def test_sighup_reads_policies_from_a_changed_policies_dir(
        spawn_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    first = one_shape_policies(tmp_path / "first")  # lookup of sku "widget" only
    second = one_shape_policies(tmp_path / "second")
    (second / "one.cedar").write_text(ANY_LOOKUP)
    broken = one_shape_policies(tmp_path / "broken")
    (broken / "one.cedar").write_text("permit (principal, action, resource) when { nope };\n")
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": upstream_url}], "identity": ANON,
                              "policies": {"dir": str(first), "watch": False}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    assert reason((await client.call("rec__lookup", {"sku": "gadget"}))[2]) == "unknown_tool"

    _edit(gw.config_path, dir=str(second))
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: RELOADED in gw.log(), what="the reload")
    assert "result" in (await client.call("rec__lookup", {"sku": "gadget"}))[2], gw.log()
    assert (await _readyz_policies(http, gw.url))["dir"] == str(second)
    assert "take effect after a restart" not in gw.log()  # policies.dir applies live

    # A directory that does not load keeps both the set in force and the directory it came from.
    _edit(gw.config_path, dir=str(broken), max_chain_depth=3)
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: KEPT in gw.log(), what="the failed reload")
    assert "config sections policies.max_chain_depth changed" in gw.log()
    assert f"{broken / 'one.cedar'}" in gw.log()
    detail = await _readyz_policies(http, gw.url)
    assert detail["dir"] == str(second) and str(broken) in detail["last_error"]
    assert "result" in (await client.call("rec__lookup", {"sku": "gadget"}))[2]


async def test_sighup_with_an_unchanged_file_names_no_section_when_serve_overrode_the_host(
        spawn_gateway: Any, upstream_url: str, tmp_path: Path) -> None:
    # The file says localhost; `--host 127.0.0.1` overrides it. That is no change of the file.
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": upstream_url}], "identity": ANON,
                              "listen": {"host": "localhost"},
                              "policies": {"dir": str(one_shape_policies(tmp_path / "p")), "watch": False}},
                             args=("--host", "127.0.0.1"))
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: RELOADED in gw.log(), what="the reload")
    assert "changed; they take effect after a restart" not in gw.log(), gw.log()


async def test_sighup_while_starting_neither_kills_the_gateway_nor_is_lost(
        upstream_url: str, tmp_path: Path) -> None:
    # The gateway fetches its issuer's JWKS URL while starting; this one answers when the test says so.
    asked, release = asyncio.Event(), asyncio.Event()
    jwks = {"keys": [generate_key("EdDSA", "k1").public_jwk]}

    async def keys(request: web.Request) -> web.Response:
        asked.set()
        await release.wait()
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    jwks_url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    port = free_port()
    config = with_port({"upstreams": [{"name": "rec", "url": upstream_url}],
                        "identity": {"mode": "jwt", "issuers": [{"issuer": "https://idp.test", "jwks_url": jwks_url}]},
                        "policies": {"dir": str(one_shape_policies(tmp_path / "p")), "watch": False}}, port)
    config_path, log_path = tmp_path / "gw.yaml", tmp_path / "gw.log"
    config_path.write_text(yaml.safe_dump(config))
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        await asyncio.wait_for(asked.wait(), 30)  # the gateway is starting
        proc.send_signal(signal.SIGHUP)
        release.set()
        await poll(lambda: proc.poll() is not None or RELOADED in log_path.read_text(), timeout=30,
                   what="the start and the reload")
        assert proc.poll() is None, log_path.read_text()
        assert "listening on" in log_path.read_text()
    finally:
        release.set()
        if proc.poll() is None:
            await stop_async(proc)  # the loop serves its upstream meanwhile
        await runner.cleanup()


async def test_sighup_refuses_a_file_config_check_refuses_listing_every_problem(
        spawn_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    first = one_shape_policies(tmp_path / "first")
    second = one_shape_policies(tmp_path / "second")
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": upstream_url}], "identity": ANON,
                              "policies": {"dir": str(first), "watch": False}})
    # A valid model naming files that are not there: `customs config check` refuses it, so must SIGHUP.
    data = yaml.safe_load(gw.config_path.read_text())
    data["policies"]["dir"] = str(second)
    data["identity"] = {"mode": "jwt", "issuers": [{"issuer": "https://idp.test",
                                                    "jwks_file": str(tmp_path / "missing-jwks.json")}]}
    data["listen"]["tls"] = {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(tmp_path / "missing.key")}
    gw.config_path.write_text(yaml.safe_dump(data))
    check = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(gw.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "is invalid, nothing changed" in gw.log(), what="the refused config")
    for problem in ("identity.issuers[0].jwks_file", "listen.tls.cert_file", "listen.tls.key_file"):
        assert problem in gw.log() and problem in check.stdout + check.stderr, (problem, gw.log())
    assert RELOADED not in gw.log() and "take effect after a restart" not in gw.log()
    assert (await _readyz_policies(http, gw.url))["dir"] == str(first)  # the running config stays
