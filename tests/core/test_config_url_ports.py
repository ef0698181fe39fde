"""A URL in customs.yaml whose port is no port, or with a space or control character in it: `config check` passed
it, and `serve` then ended in a traceback (urllib's ValueError from the URL's port) or dialled a host that
cannot exist. Each is a problem at its path now, in every URL the config takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import REPO
from tests.support.cli import customs

BAD_URLS = ["http://127.0.0.1:abc/mcp", "http://127.0.0.1:99999/mcp", "http://127.0.0.1:-1/mcp", "http://a b/mcp",
            "http://127.0.0.1:9/mcp\n", "http://127.0.0.1:9/m\tcp"]
UPSTREAM = {"name": "a", "url": "http://127.0.0.1:9/mcp"}


def _at(place: str, url: str) -> tuple[dict[str, Any], str]:
    """A config document with `url` at `place`, and the path its problem is reported at."""
    issuer = {"issuer": "https://idp.test", "jwks_url": url}
    documents = {
        "upstreams[0].url": ({"upstreams": [{"name": "a", "url": url}]}),
        "listen.public_url": {"upstreams": [UPSTREAM], "listen": {"public_url": url}},
        "identity.issuers[0].jwks_url": {"upstreams": [UPSTREAM], "identity": {"mode": "jwt", "issuers": [issuer]}},
        "approvals.webhooks[0].url": {"upstreams": [UPSTREAM], "approvals": {"webhooks": [{"url": url}]}},
        "telemetry.traces.endpoint": {"upstreams": [UPSTREAM], "telemetry": {"traces": {"endpoint": url}}},
        "store.redis.url": {"upstreams": [UPSTREAM],
                            "store": {"redis": {"url": url.replace("http://", "redis://").replace("/mcp", "/0")}}},
    }
    return documents[place], place


PLACES = ("upstreams[0].url", "listen.public_url", "identity.issuers[0].jwks_url", "approvals.webhooks[0].url",
          "telemetry.traces.endpoint", "store.redis.url")


# Not a redis URL with a space: it may hold one in its password (test_a_redis_password_may_hold_a_space).
@pytest.mark.parametrize(("place", "url"), [(place, url) for place in PLACES for url in BAD_URLS
                                            if not (place == "store.redis.url" and any(c.isspace() for c in url))])
def test_a_url_with_no_port_or_a_space_is_a_problem_at_its_path(place: str, url: str) -> None:
    document, path = _at(place, url)
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert any(p.startswith(f"{path}: ") for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/mcp", "https://[::1]:8443/mcp", "http://h:0/x", "http://h:65535",
                                 "https://idp.example/mcp?x=1", "https://hooks.example/a b?c=d e"])
def test_urls_with_a_port_in_range_or_none_still_pass(url: str) -> None:
    assert parse_config({"upstreams": [{"name": "a", "url": url}]}).upstreams[0].url == url


@pytest.mark.parametrize("command", ["config", "serve"])
def test_config_check_and_serve_refuse_a_port_that_is_no_number_without_a_traceback(command: str,
                                                                                    tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text(f"listen: {{port: 0}}\nupstreams:\n  - {{name: a, url: 'http://127.0.0.1:abc/mcp'}}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    argv = ["config", "check", config] if command == "config" else ["serve", "--config", config]
    result = customs(*argv, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2 and "upstreams[0].url: " in result.stderr and "port" in result.stderr, result.stderr


def test_a_redis_password_may_hold_a_space() -> None:
    """redis-py reads `redis://:my pass@host` as the password `my pass`: such a URL is not refused for its space."""
    config = parse_config({"upstreams": [UPSTREAM], "store": {"redis": {"url": "redis://:my pass@127.0.0.1:6379/0"}}})
    assert config.store.redis.url == "redis://:my pass@127.0.0.1:6379/0"  # type: ignore[union-attr]
