"""listen.allowed_hosts and listen.allowed_origins: an entry that can never match a request is a config error.

A Host header is `host[:port]` and a browser's Origin is `scheme://host[:port]`; an entry written as a URL in
allowed_hosts, or as a bare host in allowed_origins, matched nothing and every request got 403 with
`config check` saying OK.
"""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.cli import REPO, customs_main

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:1/mcp"}]


def problems(listen: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "listen": listen})
    return info.value.problems


@pytest.mark.parametrize("entry", ["https://customs.example", "customs.example/mcp", "a b", "", "host:port",
                                   "customs.example:99999", "[::1"])
def test_an_allowed_host_that_is_no_host_is_refused(entry: str) -> None:
    found = problems({"allowed_hosts": ["customs.example", entry]})
    assert len(found) == 1 and found[0].startswith("listen.allowed_hosts[1]: "), found


@pytest.mark.parametrize("entry", ["customs.example", "https://customs.example/path", "null", "",
                                   "https://*.example.com", "ftp://customs.example", "https://x.example?q=1"])
def test_an_allowed_origin_that_is_no_origin_is_refused(entry: str) -> None:
    found = problems({"allowed_origins": ["https://ok.example", entry]})
    assert len(found) == 1 and found[0].startswith("listen.allowed_origins[1]: "), found


def test_hosts_and_origins_as_they_are_written_still_load() -> None:
    config = parse_config({"upstreams": UPSTREAMS, "listen": {
        "allowed_hosts": ["customs.example", "customs.example:8443", "10.0.0.7", "[::1]", "[::1]:8700", "*",
                          "Customs.Example"],
        "allowed_origins": ["https://ok.example", "http://ok.example:8080/", "http://[::1]:8700", "*"]}})
    assert "*" in config.listen.allowed_hosts and "*" in config.listen.allowed_origins


def test_config_check_names_the_entry(tmp_path) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: [{name: a, url: 'http://127.0.0.1:1/mcp'}]\n"
                    "listen: {allowed_hosts: ['https://customs.example'], allowed_origins: [customs.example]}\n")
    result = customs_main("config", "check", path)
    assert result.returncode == 2
    assert "listen.allowed_hosts[0]: " in result.stderr and "listen.allowed_origins[0]: " in result.stderr


def test_a_wildcard_listen_host_without_public_url_is_warned_about(tmp_path) -> None:
    # 0.0.0.0 is where the gateway listens, not a URL anyone connects to: without public_url the gateway's own
    # URL (token audience, allowed Host, RFC 9728 metadata) would name it, and agents' Host headers get 403.
    path = tmp_path / "customs.yaml"
    for host in ("0.0.0.0", "::"):
        path.write_text(f"upstreams: [{{name: a, url: 'http://127.0.0.1:1/mcp'}}]\nlisten: {{host: '{host}'}}\n"
                        f"policies: {{dir: {REPO / 'policies'}}}\n")
        result = customs_main("config", "check", path)
        assert result.returncode == 0, result.stderr
        assert "warning: listen.public_url: unset" in result.stderr and host in result.stderr, result.stderr
    path.write_text("upstreams: [{name: a, url: 'http://127.0.0.1:1/mcp'}]\n"
                    "listen: {host: 0.0.0.0, public_url: 'https://customs.example'}\n"
                    f"policies: {{dir: {REPO / 'policies'}}}\n")
    result = customs_main("config", "check", path)
    assert result.returncode == 0 and "public_url" not in result.stderr, result.stderr
