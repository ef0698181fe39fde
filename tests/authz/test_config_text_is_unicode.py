"""Config text that reaches every decision must be Unicode: `environment` is `context.environment`, the `agents:`
registry gives actors their Cedar attributes. A lone surrogate there (YAML's "\\udce9" escape, or an environment
variable whose bytes are not UTF-8, which Python reads as surrogates) cannot be encoded for Cedar: the gateway
started, and every call and list then answered internal_error. It is a config error with its path instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from subprocess import run

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.cli import REPO

UPSTREAMS = [{"name": "inventory", "url": "http://127.0.0.1:9/mcp"}]


def test_an_environment_variable_that_is_not_utf8_is_a_config_error() -> None:
    data = {"upstreams": UPSTREAMS, "environment": "${DEPLOY_ENV}"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={"DEPLOY_ENV": "prod\udce9"})  # the byte 0xE9 (Latin-1 é) as os.environ has it
    assert caught.value.problems == ["environment: not valid Unicode text (a lone surrogate: a \\u escape, or "
                                     "an environment variable whose bytes are not UTF-8)"]


def test_registry_entries_and_their_ids_must_be_unicode() -> None:
    data = {"upstreams": UPSTREAMS, "agents": {"spiffe://acme.example/agent/p\ud800": {"tenant": "acme"},
                                               "planner": {"tenant": "ac\udc00me", "groups": ["ops\ud800"]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = "\n".join(caught.value.problems)
    assert "agents: key 'spiffe://acme.example/agent/p\\ud800' is not valid Unicode text" in problems
    assert "agents.planner.tenant: not valid Unicode text" in problems
    assert "agents.planner.groups[0]: not valid Unicode text" in problems
    problems.encode()  # the report itself can be printed


def test_config_check_names_the_field_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams: [{name: inventory, url: 'http://127.0.0.1:9/mcp'}]\n"
                      "environment: ${DEPLOY_ENV}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    env = {**os.environ, "DEPLOY_ENV": "prod\udce9"}  # passed on as the bytes b"prod\xe9"
    done = run([sys.executable, "-m", "gateway", "config", "check", str(config)], cwd=REPO, env=env,
               capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "environment: not valid Unicode text" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
