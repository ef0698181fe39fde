"""A `Tool`, `Server`, `Agent` or `Tenant` literal that names nothing the gateway can ever decide is refused.

A tool is `Tool::"<upstream>/<tool>"` and an upstream `Server::"<upstream>"` with a name of `[a-z0-9_-]+`, but
`Tool::"inventory__get_stock"` (the name an agent sees on `/mcp`), `Tool::"get_stock"` or `Server::"Inventory"`
validated and matched nothing: a forbid naming one never fired; so did `Agent::"spiffe://Acme.example/x"` (a token
whose `sub` claims to be a SPIFFE ID must be a valid one) and `Tenant::""` (an empty tenant is no tenant)."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import shipped_schema_dir

from gateway.authz.policyset import PolicyLoadError, load_policies


def _dir(tmp_path: Path, policy: str) -> Path:
    return shipped_schema_dir(tmp_path, "e", f'@id("e")\n{policy}\n')


@pytest.mark.parametrize(("policy", "problem"), [
    ('forbid (principal, action == Action::"call_tool", resource == Tool::"inventory__get_stock");',
     'Tool::"inventory__get_stock" names no tool'),
    ('forbid (principal, action == Action::"call_tool", resource) when { resource == Tool::"get_stock" };',
     'Tool::"get_stock" names no tool'),
    ('forbid (principal, action == Action::"call_tool", resource in Server::"Inventory");',
     'Server::"Inventory" names no upstream'),
    ('forbid (principal, action == Action::"call_tool", resource) when '
     '{ resource in [Server::"payments", Server::"pay ments"] };', 'Server::"pay ments" names no upstream'),
    ('forbid (principal, action == Action::"call_tool", resource == Tool::"Payments/pay");',
     'Tool::"Payments/pay" names no tool'),
    # a sub that claims to be a SPIFFE ID must be a valid one (401 otherwise): this agent never calls
    ('forbid (principal == Agent::"spiffe://Acme.example/agent/x", action, resource);',
     'Agent::"spiffe://Acme.example/agent/x" names no agent'),
    ('forbid (principal, action == Action::"call_tool", resource) when '
     '{ principal in [Agent::"spiffe://acme.example/agent/x/"] };', 'Agent::"spiffe://acme.example/agent/x/" names no'),
    ('forbid (principal in Tenant::"", action == Action::"call_tool", resource);', 'Tenant::"" names no tenant'),
])
def test_a_literal_naming_nothing_is_refused(tmp_path: Path, policy: str, problem: str) -> None:
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(_dir(tmp_path, policy))
    problems = "\n".join(refused.value.problems)
    assert f"e.cedar:1: policy 'e': {problem}" in problems, problems


@pytest.mark.parametrize("policy", [
    'forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock");',
    'forbid (principal, action == Action::"read_resource", resource == Tool::"inventory/inventory://skus");',
    'forbid (principal, action == Action::"call_tool", resource == Tool::"my-up_2/a/b");',
    'forbid (principal, action == Action::"call_tool", resource in Server::"my-up_2");',
    'forbid (principal, action == Action::"call_tool", resource) when '
    '{ principal in [Agent::"spiffe://acme.example/agent/x", Agent::"bot"] };',
])
def test_literals_the_gateway_can_decide_load(tmp_path: Path, policy: str) -> None:
    assert load_policies(_dir(tmp_path, policy)).version.startswith("sha256:")


def test_the_loaders_copies_of_config_names_match_the_config() -> None:
    """The loader's checks keep their own copies (the config package is not imported by `policy validate`)."""
    from typing import get_args

    from gateway.authz.entitylits import UPSTREAM_NAME
    from gateway.authz.valuelits import SENSITIVITIES
    from gateway.config.upstreams import NAME_RE, Sensitivity

    assert SENSITIVITIES == get_args(Sensitivity)
    assert NAME_RE.pattern == f"^{UPSTREAM_NAME.pattern}$"
