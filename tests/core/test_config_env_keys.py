"""`${VAR}` in a mapping's key: keys are not substituted, and a reference in one was kept as written without a
word, so `tools: {${PAY_TOOL}: {sensitivity: restricted}}` labelled a tool named `${PAY_TOOL}` (none: the tool
stayed unrestricted), an `agents:` entry keyed `${AGENT}` attributed no agent, and `config check` said OK.
It is a problem at the key's path now; `$${` (a literal `${`) in a key is still just text."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import REPO
from tests.support.cli import customs_main

CONFIG = """\
upstreams:
  - name: payments
    url: http://127.0.0.1:9/mcp
    tools: {${PAY_TOOL}: {sensitivity: restricted}, "pay$${x}": {read_only: true}}
    headers: {"X-${TEAM:-blue}": "${TEAM:-blue}"}
agents: {"${AGENT}": {tenant: acme}}
policies: {dir: %s}
""" % (REPO / "policies")
WHY = "a key is not read from the environment (${...} is replaced in values only); write the key itself"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "customs.yaml"
    path.write_text(CONFIG)
    return path


def test_a_reference_in_a_key_is_a_problem_at_its_path_set_or_not(config: Path) -> None:
    for env in ({"PAY_TOOL": "pay", "AGENT": "a", "TEAM": "red"}, {}):
        with pytest.raises(ConfigError) as info:
            load_config(config, env=env)
        assert info.value.problems == [f"upstreams[0].tools.${{PAY_TOOL}}: {WHY}",
                                       f"upstreams[0].headers.X-${{TEAM:-blue}}: {WHY}", f"agents.${{AGENT}}: {WHY}"]


def test_an_escaped_reference_in_a_key_is_text_and_values_are_still_substituted(tmp_path: Path) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text(CONFIG.replace("${PAY_TOOL}", "pay").replace('"X-${TEAM:-blue}"', "X-Team")
                    .replace('"${AGENT}"', "a"))
    loaded = load_config(path, env={"TEAM": "red"})
    assert "pay" in loaded.upstreams[0].tools and len(loaded.upstreams[0].tools) == 2  # `pay$${x}` is no reference
    assert loaded.upstreams[0].headers == {"X-Team": "red"} and loaded.agents["a"].tenant == "acme"


def test_config_check_names_it(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAY_TOOL", "pay")
    monkeypatch.setenv("AGENT", "a")
    result = customs_main("config", "check", config)
    assert result.returncode == 2 and f"  upstreams[0].tools.${{PAY_TOOL}}: {WHY}" in result.stderr, result.stderr
