"""SIGTERM (or Ctrl-C) that arrives while `customs serve` is still starting ends it with exit 0, as once it listens.

Start-up can take seconds (a JWKS URL fetched with a 5 s timeout, stdio children initializing, Redis pinged);
a container stopped or a deploy rolled back in that window got the signal's default action, exit -15.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.conftest import free_port, with_port
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
