"""A config file that names no `policies.dir` (the issue's own contract example has no `policies` section)
was refused by `customs config check` and `customs serve` unless the working directory held a `policies/`
directory (`policies.dir: policies: not a directory`, exit 2). A `policies/` in the working directory is
still used; without one the shipped policies are, as `customs serve` without a config uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from gateway.serve import shipped_policies
from tests.conftest import REPO, free_port
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


def customs(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gateway", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_config_check_passes_the_contract_example_anywhere(tmp_path: Path) -> None:
    (tmp_path / "customs.yaml").write_text(CONTRACT.format(port=8700))
    done = customs("config", "check", "customs.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "customs.yaml: OK (2 upstream(s): inventory, time)\n",
                                                           "")  # (on the old code: policies.dir: … exit 2)


def test_the_shipped_set_is_the_default_only_without_a_policies_dir_here(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text(CONTRACT.format(port=8700))
    monkeypatch.chdir(tmp_path)
    assert load_config(path).policies.dir == shipped_policies()
    (tmp_path / "policies").mkdir()  # one in the working directory is used, as documented before
    assert load_config(path).policies.dir == Path("policies")
    path.write_text(CONTRACT.format(port=8700) + "policies: {dir: mine}\n")  # a named one is never replaced
    assert load_config(path).policies.dir == tmp_path / "mine"


async def test_serve_starts_on_the_contract_example_anywhere(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "customs.yaml").write_text(CONTRACT.format(port=port))
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", "customs.yaml"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: "listening on" in log.read_text() or proc.poll() is not None, within=30)
        assert proc.poll() is None, log.read_text()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
        assert body["checks"]["policies"]["detail"]["dir"] == str(shipped_policies())
        assert f"loaded from {shipped_policies()}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
