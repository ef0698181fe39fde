"""SIGTERM with agents' server→client streams open (a session's GET stream, a legacy HTTP+SSE stream): the
streams end at once and the gateway exits without waiting out its drain deadline, which aiohttp would
otherwise wait twice for such streams (past a container's grace period)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DRAIN_S = 20.0
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2025-06-18"}


async def _until_listening(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while "listening on" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert asyncio.get_running_loop().time() < deadline, log.read_text()
        await asyncio.sleep(0.05)


async def test_open_streams_do_not_hold_up_shutdown(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port, "drain_timeout_s": DRAIN_S},
        "upstreams": [{"name": "inventory", "command": [sys.executable, "-m", "gateway.demo.servers", "inventory"]}],
        "policies": {"dir": str(REPO / "policies")}, "decision_log": {"path": str(tmp_path / "d.jsonl")}}))
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        await _until_listening(proc, log)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DRAIN_S)) as http:
            async with http.post(f"{base}/mcp", json=INIT, headers=HEADERS) as resp:
                session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
            async with http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                 headers=session) as resp:
                assert resp.status == 202
            get = await http.get(f"{base}/mcp", headers={**session, "Accept": "text/event-stream"})
            legacy = await http.get(f"{base}/sse", headers={"Accept": "text/event-stream"})
            assert get.status == 200 and legacy.status == 200
            assert b"event: endpoint" in await legacy.content.readline()
            proc.send_signal(signal.SIGTERM)
            # Both streams end (EOF) and the process exits, well inside the drain deadline.
            await asyncio.wait_for(asyncio.gather(get.read(), legacy.read()), DRAIN_S / 2)
            get.release()
            legacy.release()
        code = await asyncio.to_thread(proc.wait, DRAIN_S / 2)
        assert code == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
