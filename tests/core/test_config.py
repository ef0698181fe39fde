"""Config loading: every problem reported with its path; env substitution; unknown keys rejected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config


def test_minimal_config_has_documented_defaults() -> None:
    config = parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}]})
    assert config.listen.port == 8700
    assert config.listen.max_body_bytes == 1_048_576
    assert config.identity.mode == "anonymous"
    assert config.store == "memory"
    assert config.approvals.ttl_s == 900
    assert config.upstreams[0].kind == "streamable_http"
    assert config.upstreams[0].tool_prefix == "inventory__"


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "upstreams": [{"name": "ok", "url": "http://127.0.0.1:1/mcp"}, {"name": "Bad Name", "url": "nope"}],
            "listen": {"port": "eighty"},
            "surprise": True,
        })
    problems = info.value.problems
    assert "upstreams[1].url: not a URL (expected http:// or https:// with a host)" in problems
    assert "upstreams[1].name: must match [a-z0-9_-]+" in problems
    assert any(p.startswith("listen.port:") for p in problems)
    assert "surprise: unknown key" in problems


def test_unknown_nested_key_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp", "timeout": 3}]})
    assert info.value.problems == ["upstreams[0].timeout: unknown key"]


def test_upstream_needs_exactly_one_target() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a"}, {"name": "b", "url": "http://h/mcp", "command": ["x"]}]})
    assert info.value.problems == ["upstreams[0]: exactly one of url or command is required",
                                   "upstreams[1]: exactly one of url or command is required"]


def test_duplicate_upstream_names_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}, {"name": "a", "command": ["x"]}]})
    assert "duplicate upstream name 'a'" in info.value.problems[0]


def test_env_references_substituted_and_missing_ones_reported() -> None:
    data = {"upstreams": [{"name": "a", "url": "${BASE}/mcp", "headers": {"X-Key": "${KEY}"}}]}
    config = parse_config(data, env={"BASE": "http://127.0.0.1:9", "KEY": "k"})
    assert config.upstreams[0].url == "http://127.0.0.1:9/mcp"
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"BASE": "http://127.0.0.1:9"})
    assert info.value.problems[0] == "upstreams[0].headers.X-Key: environment variable KEY is not set"


def test_redis_store_and_bad_url() -> None:
    config = parse_config({"upstreams": [{"name": "a", "command": ["x"]}],
                           "store": {"redis": {"url": "redis://127.0.0.1:6379/0"}}})
    assert config.store != "memory"
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "command": ["x"]}], "store": {"redis": {"url": "http://x"}}})
    assert "store.redis.url: not a redis:// URL" in info.value.problems


def test_missing_upstreams_section() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert info.value.problems == ["upstreams: Field required"]


def test_yaml_errors_and_relative_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].startswith("line ")
    good = tmp_path / "good.yaml"
    good.write_text("upstreams: [{name: a, command: [x]}]\npolicies: {dir: pol}\n")
    assert load_config(good).policies.dir == tmp_path / "pol"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in info.value.problems[0]


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("upstreams:\n  - {name: ok, url: 'http://127.0.0.1:1/mcp'}\n  - {name: x, url: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "upstreams[1].url: not a URL" in proc.stderr
    bad.write_text("upstreams:\n  - {name: ok, url: 'http://127.0.0.1:1/mcp'}\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
