"""Delegation chains from nested `act`, anonymous mode, build_identifier, RFC 9728 metadata and challenges."""

from __future__ import annotations

import logging

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import AgentRecord, IdentityConfig
from gateway.context import Actor
from gateway.errors import GatewayError
from gateway.identity import (
    AnonymousIdentifier,
    JwtIdentifier,
    build_identifier,
    protected_resource_metadata,
    reject_query_token,
    www_authenticate,
)
from gateway.identity.chain import ChainError, build_chain, claim_mapping
from tests.identity.conftest import AUDIENCE, RESOURCE, MakeIdentifier, bearer
from tests.support.tokens import TestIssuer, act_chain

SHOPPER = "spiffe://acme.test/agent/shopper"
PLANNER = "spiffe://acme.test/agent/planner"
ORCH = "spiffe://acme.test/agent/orchestrator"
STRANGER = "spiffe://elsewhere.test/agent/x"


async def test_chain_order_and_attribute_sources(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(
        issuer.config(claims={"tenant": "org"}),
        agents={PLANNER: {"tenant": "acme", "trust": "high"}, ORCH: {"tenant": "registry-only"}})
    act = act_chain((ORCH, {"org": "acme", "environment": "prod"}), PLANNER, STRANGER)
    principal = await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, claims={"org": "acme"},
                                                             act=act)), None)
    assert principal.attributes == {"tenant": "acme"}
    assert principal.chain == (
        Actor(ORCH, {"tenant": "acme", "environment": "prod"}),   # its own act claims win over the registry
        Actor(PLANNER, {"tenant": "acme", "trust": "high"}),      # no claims: registry
        Actor(STRANGER, {}),                                       # unknown: none (fails closed in policy)
    )
    assert principal.chain_ids == [ORCH, PLANNER, STRANGER]


async def test_an_agent_named_again_by_sub_alone_takes_nothing_from_the_registry(
        issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    # The registry is for agents the token does not describe: at an agent's first naming. The shopper's own claims
    # say acme; the registry's globex (and owner) must neither refuse the token (it is consistent) nor add to the
    # shopper's entity when an `act` object names the shopper again by `sub` alone; the planner, named bare twice,
    # has its registry attributes once.
    identifier = await make_identifier(issuer.config(), agents={
        SHOPPER: {"tenant": "globex", "owner": "mallory"}, PLANNER: {"tenant": "acme", "trust": "high"}})
    act = act_chain(PLANNER, SHOPPER, PLANNER)
    principal = await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme", act=act)), None)
    assert principal.attributes == {"tenant": "acme"}
    assert principal.chain == (Actor(PLANNER, {"tenant": "acme", "trust": "high"}), Actor(SHOPPER, {}),
                               Actor(PLANNER, {}))


async def test_chain_of_sixteen_is_accepted(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    ids = [f"spiffe://acme.test/agent/a{i}" for i in range(16)]
    principal = await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, act=act_chain(*ids))), None)
    assert principal.chain_ids == ids


@pytest.mark.parametrize(("act", "message"), [
    ("spiffe://acme.test/a", "must be an object"),
    ({"sub": ""}, "non-empty"),
    ({"sub": "spiffe://acme.test/a", "act": ["x"]}, "must be an object"),
    ({"sub": "spiffe://ACME/a"}, "trust domain"),
    ({"sub": "x" * 3000}, "non-empty string"),
])
def test_malformed_act(act: object, message: str) -> None:
    with pytest.raises(ChainError, match=message):
        build_chain(act, claim_mapping({}), {})


def test_no_act_is_an_empty_chain() -> None:
    assert build_chain(None, claim_mapping({}), {"x": AgentRecord(tenant="t")}) == ()


async def test_anonymous_identifier_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    config = IdentityConfig(anonymous_principal="dev", anonymous_attributes={"tenant": "demo"})
    with caplog.at_level(logging.WARNING, logger="customs.identity"):
        identifier = AnonymousIdentifier(config)
        await identifier.start()
        first = await identifier.identify({}, None)
        second = await identifier.identify({"Authorization": "Bearer whatever"}, None)
        await identifier.close()
    assert [r.message for r in caplog.records].count(
        "identity mode anonymous: every caller is the same principal 'dev'; use only for local work") == 1
    assert first == second
    assert (first.id, first.subject, first.issuer, first.anonymous, first.attributes) == \
        ("dev", "dev", "anonymous", True, {"tenant": "demo"})


@pytest.mark.parametrize(("identity", "problem"), [
    ({"anonymous_attributes": {"tenant": ""}}, "identity.anonymous_attributes.tenant: String should have at least 1"),
    ({"anonymous_principal": ""}, "identity.anonymous_principal: String should have at least 1"),
])
def test_an_empty_anonymous_value_is_a_config_error(identity: dict[str, object], problem: str) -> None:
    """`tenant: ${TENANT}` with the variable unset made the anonymous principal's tenant "", which passes
    `principal has tenant` and equals its own context.tenant: the shipped tenant-scoped permits allowed its
    reads, where no tenant (as a token's `tenant: ""` reads, and the agents registry refuses) is permitted nothing."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
                      "identity": {"mode": "anonymous", **identity}})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_build_identifier_follows_mode(issuer: TestIssuer) -> None:
    assert isinstance(build_identifier(IdentityConfig(), {}, RESOURCE, None), AnonymousIdentifier)
    config = IdentityConfig.model_validate({"mode": "jwt", "issuers": [issuer.config()]})
    assert isinstance(build_identifier(config, {}, RESOURCE, None), JwtIdentifier)


def test_protected_resource_metadata(issuer: TestIssuer) -> None:
    config = IdentityConfig.model_validate({"mode": "jwt", "issuers": [
        issuer.config(), {"issuer": "https://other.test", "jwks_file": str(issuer.jwks_path)}]})
    assert protected_resource_metadata(RESOURCE + "/", config) == {
        "resource": f"{RESOURCE}/mcp",
        "authorization_servers": [issuer.issuer, "https://other.test"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Customs MCP gateway",
    }
    assert protected_resource_metadata(RESOURCE, config, "/mcp/payments")["resource"] == f"{RESOURCE}/mcp/payments"


def test_www_authenticate() -> None:
    base = f'Bearer resource_metadata="{RESOURCE}/.well-known/oauth-protected-resource/mcp"'
    assert www_authenticate(RESOURCE) == base
    assert www_authenticate(RESOURCE + "/", "invalid_token") == base + ', error="invalid_token"'


def test_reject_query_token() -> None:
    reject_query_token({"other": "x"}, RESOURCE)  # no token: nothing happens
    with pytest.raises(GatewayError) as caught:
        reject_query_token({"access_token": "abc"}, RESOURCE)
    assert caught.value.reason == "unauthenticated"
    assert 'error="invalid_request"' in caught.value.headers["WWW-Authenticate"]
    with pytest.raises(GatewayError) as bare:
        reject_query_token({"access_token": "abc"})
    assert bare.value.headers == {}


async def test_empty_string_claims_count_as_missing(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    """`tenant: ""` (what some IdPs emit for an unset user attribute) became the tenant "", which the shipped
    tenant-scoped permits (`principal has tenant && principal.tenant == context.tenant`) accepted as a tenant;
    an empty claim is now left out, like a missing one, and the registry applies."""
    agent = "spiffe://acme.test/agent/empty"
    identifier = await make_identifier(issuer.config(), agents={agent: {"tenant": "acme"}})
    token = issuer.mint(agent, aud=AUDIENCE, tenant="", claims={"owner": "", "groups": ["", ""]})
    principal = await identifier.identify(bearer(token), None)
    assert principal.attributes == {"tenant": "acme"}
    assert principal.tenant == "acme"


def test_registry_attributes_must_not_be_empty() -> None:
    """An `agents:` entry with `tenant: ""` (say `${AGENT_TENANT}` set to nothing) made the agent a member of
    the tenant "", which tenant-scoped permits accept for any principal without a tenant (context.tenant is
    "" then): the empty claim is refused at identify, the empty registry value was not. It is a config error,
    with its path, like every other unusable setting."""
    agent = "spiffe://acme.test/agent/blank"
    base = {"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9/mcp"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "agents": {agent: {"tenant": "${AGENT_TENANT}", "groups": ["ops", ""]}}},
                     env={"AGENT_TENANT": ""})
    text = str(caught.value)
    assert f"agents.{agent}.tenant" in text
    assert f"agents.{agent}.groups[1]" in text
    assert parse_config({**base, "agents": {agent: {"tenant": "acme"}}}).agents[agent].tenant == "acme"
