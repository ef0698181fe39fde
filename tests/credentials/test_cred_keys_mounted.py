"""An operator's signing key on a read-only mount (a Kubernetes secret volume: mode 0644, read-only), through a
real gateway process started in a user and mount namespace where that mount is real."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import free_port
from tests.credentials.test_cred_keys import write_key


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces)")


async def test_a_group_readable_key_on_a_read_only_mount_signs(tmp_path: Path, permissive_policies: Path) -> None:
    """The key could not be tightened to 0600 (read-only file system), and that failure used to make the gateway
    ignore the key: `config check` said OK, then `serve` refused to start outside dev ('no EdDSA signing key').
    The key is used now, with a warning that it stays readable by group/others."""
    kid = write_key(tmp_path / "secret.pem")
    mount = tmp_path / "keys"
    mount.mkdir()
    port = free_port()
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({
        "environment": "production", "listen": {"host": "127.0.0.1", "port": port},
        "upstreams": [{"name": "pay", "url": "http://127.0.0.1:9/mcp", "credentials": {"mode": "minted"}}],
        "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(mount)}}))
    script = (f"mount -t tmpfs tmpfs {mount} && cp {tmp_path / 'secret.pem'} {mount}/signing.pem && "
              f"chmod 644 {mount}/signing.pem && mount -o remount,ro {mount} && "
              f"exec {sys.executable} -m gateway serve --config {config}")
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while "listening on" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert asyncio.get_running_loop().time() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)  # polling the child's log for readiness, bounded by the deadline
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/.well-known/jwks.json") as resp:
            assert [k["kid"] for k in (await resp.json())["keys"]] == [kid]
        assert "signing.pem is readable by group/others and could not be restricted" in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
