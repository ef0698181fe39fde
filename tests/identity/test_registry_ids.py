"""An `agents:` registry entry whose id no token can carry is a config error at its path.

A token whose `sub` (or an actor's) claims to be a SPIFFE ID must be a valid one, else it is refused at identify,
and an empty `sub` is refused too; so an entry `"spiffe://acme.example/agent/planner/"` (a trailing slash) or
`"spiffe://Acme.example/x"` never matched anything: config check said OK and the agent it meant was evaluated with
no attributes (tenant-scoped permits denied it, quietly)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:1/mcp"}]


@pytest.mark.parametrize(("agent", "problem"), [
    ("spiffe://acme.example/agent/planner/", "agents.spiffe://acme.example/agent/planner/: not a valid SPIFFE ID"),
    ("spiffe://Acme.example/x", "agents.spiffe://Acme.example/x: not a valid SPIFFE ID"),
    ("SPIFFE://acme.example/x", "agents.SPIFFE://acme.example/x: not a valid SPIFFE ID"),
    ("", "agents.: an agent id must not be empty"),
])
def test_a_registry_id_no_token_can_carry_is_refused(agent: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "agents": {agent: {"tenant": "acme"}}})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("agent", ["spiffe://acme.example/agent/planner", "planner", "user:alice"])
def test_ids_a_token_can_carry_load(agent: str) -> None:
    assert agent in parse_config({"upstreams": UPSTREAMS, "agents": {agent: {"tenant": "acme"}}}).agents
