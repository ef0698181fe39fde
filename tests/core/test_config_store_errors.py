"""A broken `store:` section is reported alone, not beside pydantic's "should be 'memory'" for the other branch."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9001/mcp"}]


def problems(store: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "store": store}, env={})
    return info.value.problems


def test_a_bad_redis_section_names_only_its_own_problem() -> None:
    assert problems({"redis": {"url": "http://h:6379"}}) == ["store.redis.url: not a redis:// URL"]
    # the compose stack without REDIS_URL: the variable is the problem, not "memory"
    unset = problems({"redis": {"url": "${REDIS_URL}"}})
    assert unset[0] == "store.redis.url: environment variable REDIS_URL is not set"
    assert not any("memory" in p for p in unset)
    assert problems({"redsi": {}}) == ["store.redis: required", "store.redsi: unknown key"]


def test_a_bad_word_names_memory_and_both_kinds_still_load() -> None:
    assert problems("mem") == ["store: must be memory or {redis: {url: redis://host:6379/0}}"]
    assert parse_config({"upstreams": UPSTREAMS}).store == "memory"
    redis = parse_config({"upstreams": UPSTREAMS, "store": {"redis": {"url": "redis://h:6379/1"}}}).store
    assert not isinstance(redis, str) and redis.redis.url == "redis://h:6379/1"


def test_an_unset_variable_is_the_only_problem_named_at_its_field() -> None:
    # The empty string put in its place is not the user's value: "not a redis:// URL" / "not a URL" about it
    # would send them looking at the YAML instead of the environment.
    assert problems({"redis": {"url": "${REDIS_URL}"}}) == [
        "store.redis.url: environment variable REDIS_URL is not set"]
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "${UP_URL}"}], "listen": {"prot": 1}}, env={})
    assert info.value.problems == ["upstreams[0].url: environment variable UP_URL is not set",
                                   "listen.prot: unknown key"]
