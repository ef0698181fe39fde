"""A `signing.key_dir` where keys cannot be kept (its path, or a parent, is a file; a read-only or missing mount).

In dev (the default environment) a missing key is generated at start. Two things went wrong when key_dir could
not take one: a gateway whose upstreams need no signed token (`none`, `static`) refused to start all the same
(`signing.key_dir: …: cannot keep signing keys there`), for a key nothing would use; and `config check` said
OK to a key_dir that `serve` then refused. Now the first starts with an empty JWKS and a warning, and the second
is reported by `config check` (and serve's preflight) with the same line, when it is visible without writing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def _blocked(tmp_path: Path) -> Path:
    """A key_dir below a regular file: nothing can be created there."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file\n")
    return blocker / "keys"


async def test_no_signed_upstream_starts_though_key_dir_cannot_take_a_key(start_gateway, permissive_policies,
                                                                         tmp_path, caplog) -> None:
    key_dir = _blocked(tmp_path)
    with caplog.at_level(logging.WARNING, logger="customs.credentials"):
        gw = await start_gateway({"upstreams": [{"name": "open", "url": "http://127.0.0.1:9/mcp"}],
                                  "policies": {"dir": str(permissive_policies)},
                                  "signing": {"key_dir": str(key_dir)}})
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/.well-known/jwks.json") as resp:
        assert resp.status == 200 and await resp.json() == {"keys": []}
    assert any(f"signing.key_dir: {key_dir}: cannot keep signing keys there" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("where", ["below_a_file", "a_file"])
async def test_config_check_reports_the_key_dir_serve_refuses(start_gateway, tmp_path, capsys, where) -> None:
    key_dir = _blocked(tmp_path) if where == "below_a_file" else tmp_path / "keyfile"
    if where == "a_file":
        key_dir.write_text("not a directory\n")
    data = {"upstreams": [{"name": "pay", "url": "http://127.0.0.1:9/mcp", "credentials": {"mode": "minted"}}],
            "policies": {"dir": str(SHIPPED)}, "signing": {"key_dir": str(key_dir)}}
    with pytest.raises(ConfigError) as refused:
        await start_gateway(data)
    (line,) = refused.value.problems
    assert line.startswith(f"signing.key_dir: {key_dir}: cannot keep signing keys there"), line
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(path)]) == 2
    assert f"  {line}\n" in capsys.readouterr().err
