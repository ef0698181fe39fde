"""SIGTERM (or Ctrl-C) that arrives while `customs serve` is still starting ends it with exit 0, as once it listens,
and a SIGHUP then does not end it at all (it reloads once the gateway listens).

Start-up can take seconds (a JWKS URL fetched with a 5 s timeout, stdio children initializing, Redis pinged);
a container stopped or a deploy rolled back in that window got the signal's default action, exit -15.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.conftest import _wait_for_line, free_port, with_port
from tests.support.servers import run_aiohttp
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_during_start_up_exits_0(tmp_path: Path, permissive_policies: Path,
                                                      sig: signal.Signals) -> None:
    issuer = TestIssuer(tmp_path)
    asked, release = asyncio.Event(), asyncio.Event()

    async def jwks(request: web.Request) -> web.Response:
        asked.set()  # the gateway is inside its start-up now: it waits for this answer before listening
        await release.wait()
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    async with run_aiohttp(app) as url:
        entry = {"issuer": issuer.issuer, "algorithms": list(issuer.keys), "jwks_url": f"{url}/jwks.json"}
        config = tmp_path / "customs.yaml"
        config.write_text(yaml.safe_dump(with_port({
            "upstreams": [{"name": "a", "url": "http://127.0.0.1:1/mcp"}],
            "identity": {"mode": "jwt", "issuers": [entry]},
            "policies": {"dir": str(permissive_policies)}}, free_port())))
        log = tmp_path / "gw.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            await asyncio.wait_for(asked.wait(), 30)
            proc.send_signal(sig)
            release.set()
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()


async def _open_when_read(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """The FIFO's write end, once the gateway has opened it to read (polled: a blocking open would hang the test
    if the gateway never got there), bounded by a deadline."""
    async with asyncio.timeout(30):
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
            except OSError:
                assert proc.poll() is None, "the gateway exited before reading its policies"
                await asyncio.sleep(0.01)
                continue
            os.set_blocking(fd, True)
            return fd


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
async def test_a_signal_during_the_start_up_checks_does_not_kill_it(tmp_path: Path, permissive_policies: Path,
                                                                     sig: signal.Signals) -> None:
    # The checks before the event loop (config check's, policies parsed) are most of a start-up: the policy
    # schema is a FIFO here, so the gateway is known to be inside them when the signal is sent.
    policies = tmp_path / "fifo-policies"
    shutil.copytree(permissive_policies, policies)
    schema = policies / "schema.cedarschema"
    text = schema.read_text()
    schema.unlink()
    os.mkfifo(schema)
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump(with_port({
        "upstreams": [{"name": "a", "url": "http://127.0.0.1:1/mcp"}],
        "policies": {"dir": str(policies), "watch": False}}, free_port())))
    log = tmp_path / "gw.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        fd = await _open_when_read(schema, proc)  # the start-up checks are reading the schema now
        proc.send_signal(sig)
        with os.fdopen(fd, "w") as writer:
            writer.write(text)
        # Every later read (the engine's load, the reload) finds a plain file; the checks read the FIFO to its end.
        plain = policies / "schema.tmp"
        plain.write_text(text)
        os.replace(plain, schema)
        if sig == signal.SIGHUP:
            await _wait_for_line(log, "SIGHUP arrived while starting: reloading now", proc, 30)
            assert proc.poll() is None, log.read_text()
            proc.terminate()
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
