"""`customs demo`, the first thing a new user runs: allow, deny and hold, then an approved call runs once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def test_demo_walkthrough_shows_allow_deny_hold_and_release(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--exit-after-walkthrough", "--port", str(free_port()),
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "OK: widget: 42 in stock" in out
    assert "DENIED: Unknown tool: inventory__get_stock" in out
    assert "HELD: Call is waiting for approval" in out
    assert "bob's approve → HTTP 403 self_approval" in out  # bob owns the shopper: not his to approve
    assert "approve → HTTP 200" in out
    assert "OK: paid 12500.0 to acme-supplies" in out
    decisions = (tmp_path / "demo" / "decisions.jsonl").read_text()
    assert decisions.count('"tool":"pay"') >= 2 and '"approval_required"' in decisions


async def test_serve_without_config_runs_on_embedded_defaults(tmp_path: Path) -> None:
    import asyncio

    from tests.support.mcp_client import sdk_client

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while "listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"inventory__get_stock", "payments__pay"} <= names
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
            assert result.content[0].text == "widget: 42 in stock"
        assert "embedded defaults" in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


async def test_port_zero_settles_on_a_real_port_before_urls_are_made(tmp_path: Path) -> None:
    """`--port 0` (any free port): the URLs the gateway hands out (RFC 9728 metadata, printed agent URL)
    name the port it listens on, not `:0`."""
    import asyncio
    import re

    import aiohttp

    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while (found := re.search(r"listening on (http://127\.0\.0\.1:(\d+))", log.read_text())) is None:
            assert proc.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        base, port = found.group(1), int(found.group(2))
        assert port != 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/.well-known/oauth-protected-resource/mcp") as resp:
                assert resp.status == 200
                assert (await resp.json())["resource"] == f"{base}/mcp"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_demo_on_port_zero_prints_and_mints_for_the_real_port(tmp_path: Path) -> None:
    import re

    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--exit-after-walkthrough", "--port", "0",
         "--dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"Agents connect to: http://127\.0\.0\.1:(\d+)/mcp", proc.stdout)
    assert found is not None and found.group(1) != "0", proc.stdout
    assert ":0/" not in proc.stdout and "OK: paid 12500.0 to acme-supplies" in proc.stdout


def test_version_flag_and_command_agree() -> None:
    from gateway import __version__

    for argv in (["--version"], ["version"]):
        proc = subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == f"customs {__version__}", proc.stderr
