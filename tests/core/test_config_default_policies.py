"""A config file that names no `policies.dir` (the issue's own contract example has no `policies` section)
was refused by `customs config check` and `customs serve` unless the working directory held a `policies/`
directory (`policies.dir: policies: not a directory`, exit 2). A `policies/` in the working directory is
still used; without one the shipped policies are, as `customs serve` without a config uses them.

With anonymous identity (the contract's `identity: {mode: anonymous}`, and the default mode) such a config gets
the allow-all set instead: the contract describes a transparent proxy for local use, and with the shipped set
an anonymous principal (no tenant) was refused every tool, so the contract's gateway listed nothing and
answered every call `unknown_tool`. The start-up log says every request is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from gateway.config.load import allow_all_policies
from gateway.serve import shipped_policies
from tests.conftest import REPO, free_port
from tests.support.mcp_client import sdk_client
from tests.transport.conftest import eventually

CONTRACT = """\
listen: {{host: 127.0.0.1, port: {port}, allowed_origins: [], max_body_bytes: 1048576}}
upstreams:
  - name: inventory
    url: http://127.0.0.1:9/mcp
  - name: time
    command: [python, -m, mcp_server_time]
    env: {{TZ: UTC}}
identity: {{mode: anonymous}}
"""
JWT_IDENTITY = ("{mode: jwt, issuers: [{issuer: https://idp.example, audience: http://127.0.0.1:8700/mcp, "
                "jwks_file: jwks.json}]}")


def customs(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gateway", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@asynccontextmanager
async def serving(tmp_path: Path, config: str) -> AsyncIterator[Path]:
    """`customs serve --config customs.yaml` in `tmp_path` (its working directory) until the block ends; yields
    its log, once it listens. The log is complete after the block: the process has stopped."""
    (tmp_path / "customs.yaml").write_text(config)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", "customs.yaml"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: "listening on" in log.read_text() or proc.poll() is not None, within=30)
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        proc.terminate()
        proc.wait(20)


def test_config_check_passes_the_contract_example_anywhere(tmp_path: Path) -> None:
    (tmp_path / "customs.yaml").write_text(CONTRACT.format(port=8700))
    done = customs("config", "check", "customs.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "customs.yaml: OK (2 upstream(s): inventory, time)\n",
                                                           "")  # (on the old code: policies.dir: … exit 2)


def test_the_default_set_follows_the_identity_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "customs.yaml"
    monkeypatch.chdir(tmp_path)
    path.write_text(CONTRACT.format(port=8700))
    assert load_config(path).policies.dir == allow_all_policies()  # anonymous: the transparent proxy
    path.write_text(CONTRACT.format(port=8700).replace("identity: {mode: anonymous}\n", ""))  # the default mode
    assert load_config(path).policies.dir == allow_all_policies()
    (tmp_path / "policies").mkdir()  # anonymous: even a policies/ here is not taken for one never named
    assert load_config(path).policies.dir == allow_all_policies()
    jwt = CONTRACT.format(port=8700).replace("{mode: anonymous}", JWT_IDENTITY)
    path.write_text(jwt)
    assert load_config(path).policies.dir == Path("policies")  # JWT: the one in the working directory
    (tmp_path / "policies").rmdir()
    assert load_config(path).policies.dir == shipped_policies()  # ... else the shipped set
    path.write_text(CONTRACT.format(port=8700) + "policies: {dir: mine}\n")  # a named one is never replaced
    assert load_config(path).policies.dir == tmp_path / "mine"


async def test_serve_starts_on_the_contract_example_anywhere(tmp_path: Path) -> None:
    port = free_port()
    async with serving(tmp_path, CONTRACT.format(port=port)) as log:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
        assert body["checks"]["policies"]["detail"]["dir"] == str(allow_all_policies())
        assert "every request is allowed (policy anonymous-allow-all" in log.read_text()


async def test_the_contract_gateway_is_transparent_reads_and_writes_alike(tmp_path: Path) -> None:
    """The contract's own config, served: every upstream tool listed under its namespaced name and called, a write
    (set_stock: destructive, not read-only) as much as a read; with the shipped set none was listed or callable."""
    port = free_port()
    config = CONTRACT.format(port=port).replace(
        "url: http://127.0.0.1:9/mcp", f"command: [{sys.executable}, -m, gateway.demo.servers, inventory]").replace(
        "command: [python, -m, mcp_server_time]", f"command: [{sys.executable}, -m, mcp_server_time]")
    async with serving(tmp_path, config) as log:
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"inventory__get_stock", "inventory__set_stock", "time__get_current_time"} <= names, names
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            wrote = await client.call_tool("inventory__set_stock", {"sku": "widget", "quantity": 7})
        assert not now.is_error and '"timezone": "UTC"' in str(now.content[0].text)  # type: ignore[union-attr]
        assert not wrote.is_error and wrote.content[0].text == "widget set to 7"  # type: ignore[union-attr]
    assert '"policy_ids":["anonymous-allow-all"]' in log.read_text()  # the decision log names what allowed it
