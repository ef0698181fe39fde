"""A problem's path names the keys the config file wrote, whatever their case: tool names, env and header names."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.cli import customs_main


def test_keys_the_user_wrote_stay_in_the_path_whatever_their_case() -> None:
    # Keys starting with a capital (GetStock, TZ, X-Static) were dropped from the path as if they were
    # pydantic's union labels: "upstreams[0].tools.sensitivity" named no key of the file.
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [
            {"name": "a", "url": "http://127.0.0.1:1/mcp", "headers": {"X-Static": [1]},
             "tools": {"GetStock": {"sensitivity": "bogus"}, "function-x": {"read_only": 5},
                       "literal[y": {"pin": "md5:1"}}},
            {"name": "b", "command": ["x"], "env": {"TZ": [1]}}]})
    paths = sorted(problem.split(": ", 1)[0] for problem in info.value.problems)
    assert paths == ["upstreams[0].headers.X-Static", "upstreams[0].tools.GetStock.sensitivity",
                     "upstreams[0].tools.function-x.read_only", "upstreams[0].tools.literal[y.pin",
                     "upstreams[1].env.TZ"], info.value.problems


def test_union_labels_still_stay_out_of_the_path(tmp_path: Path) -> None:
    # store is a tagged union (memory | {redis: ...}): its branch label is not a key of the file.
    config = tmp_path / "c.yaml"
    config.write_text("upstreams: [{name: a, url: http://127.0.0.1:1/mcp, tools: {GetStock: {timeout_s: 0}}}]\n"
                      "store: {redis: {url: http://x, max_connections: 0}}\n")
    result = customs_main("config", "check", config)
    assert result.returncode == 2
    assert "  upstreams[0].tools.GetStock.timeout_s: must be greater than 0, not 0" in result.stderr.splitlines()
    assert "  store.redis.url: not a redis:// URL" in result.stderr.splitlines(), result.stderr
    assert "  store.redis.max_connections: must be greater than 0, not 0" in result.stderr.splitlines()
