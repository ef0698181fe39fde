"""`listen.host` (and `serve --host`) is where the gateway listens: an address or a name. A URL (`http://127.0.0.1`),
a host with its port (`127.0.0.1:8700`) or a bracketed IPv6 literal passed `config check`, and `serve` then stopped
with a traceback (the gateway's own URL, built from the host, did not parse) or failed to listen. Each is a problem
at `listen.host`, and `--host` a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import REPO
from tests.support.cli import customs

BAD = ["http://127.0.0.1", "127.0.0.1:8700", "[::1]", "local host", "h/x"]
UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]


@pytest.mark.parametrize("host", BAD)
def test_a_host_that_is_no_address_is_a_problem_at_listen_host(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "listen": {"host": host}})
    assert [p for p in info.value.problems if p.startswith("listen.host: ")], info.value.problems


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "customs.example", "", "fe80::1"])
def test_addresses_and_names_still_pass(host: str) -> None:
    assert parse_config({"upstreams": UPSTREAMS, "listen": {"host": host}}).listen.host == host


@pytest.mark.parametrize("host", BAD)
def test_serve_host_that_is_no_address_is_a_usage_error(host: str, tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    result = customs("serve", "--config", config, "--host", host, "--port", "8799", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert "--host" in result.stderr and "no scheme, port or brackets" in result.stderr, result.stderr


def test_serve_with_a_url_as_its_host_stops_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text("listen: {host: 'http://127.0.0.1', port: 8799}\n"
                      "upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    result = customs("serve", "--config", config, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2 and "listen.host: " in result.stderr, result.stderr
