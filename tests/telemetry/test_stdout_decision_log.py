"""`customs serve` with the default decision log (stdout): stdout carries JSON lines and nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.support.mcp_client import sdk_client
from tests.support.servers import stdio_command


async def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while needle not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        assert loop.time() < deadline, path.read_text(errors="replace")
        await asyncio.sleep(0.05)  # polling the child's output for readiness, bounded by the deadline


# The console span exporter (a debugging aid, on by config or OTEL_TRACES_EXPORTER) prints to stderr, never between
# the decision records.
@pytest.mark.parametrize(("telemetry", "env"), [({}, {}), ({"traces": {"console": True}}, {}),
                                                ({}, {"OTEL_TRACES_EXPORTER": "console"})])
async def test_stdout_is_only_decision_log_lines(tmp_path: Path, permissive_policies: Path,
                                                 telemetry: dict[str, Any], env: dict[str, str]) -> None:
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "upstreams": [{"name": "inventory", "command": stdio_command("inventory")}],
        "identity": {"mode": "anonymous"},
        "policies": {"dir": str(permissive_policies)},
        "environment": "dev",
        "signing": {"key_dir": str(tmp_path / "keys")},
        "telemetry": telemetry,
    }
    config_path = tmp_path / "customs.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
                                stdout=out, stderr=err, cwd=tmp_path,
                                env={**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **env})
    try:
        await _wait_for(err_path, "listening on", proc)  # the banner is still there, on stderr
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as client:
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
            assert not result.is_error
        await _wait_for(out_path, '"type":"decision"', proc)
    finally:
        proc.terminate()
        proc.wait(20)
    lines = [line for line in out_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a record: `customs serve | jq` works
    decisions = [r for r in records if r.get("type") == "decision"]
    assert [(d["upstream"], d["tool"], d["outcome"]) for d in decisions] == [("inventory", "get_stock", "ok")]
    assert ('"name": "tools/call inventory__get_stock"' in err_path.read_text()) == bool(telemetry or env)
