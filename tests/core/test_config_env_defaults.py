"""`${VAR:-default}` in customs.yaml reads as it does in a shell and in docker compose: the default stands in for
a variable that is unset or empty (an empty REDIS_URL left an empty URL), and a missing `${VAR}` is an error
with its path."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

DOC = {"upstreams": [{"name": "a", "url": "http://127.0.0.1:1/mcp"}],
       "store": {"redis": {"url": "${REDIS_URL:-redis://127.0.0.1:6379/0}"}},
       "listen": {"port": "${PORT:-8711}"}}


def test_an_empty_variable_takes_the_colon_dash_default() -> None:
    config = parse_config(DOC, env={"REDIS_URL": ""})
    assert config.store.redis.url == "redis://127.0.0.1:6379/0"  # type: ignore[union-attr]


def test_an_unset_variable_takes_it_too() -> None:
    assert parse_config(DOC, env={}).listen.port == 8711


def test_a_set_variable_wins_and_a_missing_one_is_an_error_with_its_path() -> None:
    config = parse_config(DOC, env={"REDIS_URL": "redis://cache:6379/1", "PORT": "9000"})
    assert config.store.redis.url == "redis://cache:6379/1" and config.listen.port == 9000  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        parse_config({**DOC, "approvals": {"webhooks": [{"url": "https://h.example", "secret": "${SECRET}"}]}},
                     env={})
    assert info.value.problems == ["approvals.webhooks[0].secret: environment variable SECRET is not set"]
