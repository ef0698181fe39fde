"""The demo issuer's tokens verify through the real identifier with the demo identity config."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import AgentRecord, IdentityConfig
from gateway.context import Actor
from gateway.demo.tokens import demo_agents_registry, demo_identity_config, mint_demo_tokens, print_tokens
from gateway.identity import JwtIdentifier
from tests.identity.conftest import AUDIENCE, RESOURCE, bearer


async def test_demo_tokens_identify(tmp_path: Path) -> None:
    tokens = mint_demo_tokens(tmp_path, AUDIENCE)
    config = IdentityConfig.model_validate(demo_identity_config(tmp_path))
    agents = {key: AgentRecord.model_validate(value) for key, value in demo_agents_registry().items()}
    identifier = JwtIdentifier(config, agents, RESOURCE, None)
    await identifier.start()
    shopper = await identifier.identify(bearer(tokens["shopper"]), None)
    assert (shopper.id, shopper.attributes) == ("spiffe://customs.demo/agent/shopper",
                                                {"tenant": "acme", "owner": "bob"})  # bob owns it, alice approves
    untrusted = await identifier.identify(bearer(tokens["untrusted"]), None)
    assert untrusted.id == "spiffe://customs.demo/agent/untrusted"
    delegated = await identifier.identify(bearer(tokens["delegated"]), None)
    assert delegated.chain == (Actor("spiffe://customs.demo/agent/orchestrator", {"tenant": "acme", "trust": "high"}),)
    admin = await identifier.identify(bearer(tokens["admin"]), None)  # README's ADMIN_TOKEN: `customs tools`
    assert (admin.id, admin.attributes.get("groups")) == ("carol", ["admins"])
    alice = await identifier.identify(bearer(tokens["alice"]), None)
    assert (alice.id, alice.attributes) == ("alice", {"groups": ["approvers", "finance"]})
    await identifier.close()
    again = mint_demo_tokens(tmp_path, AUDIENCE)  # keys are kept: old and new tokens share the issuer key
    assert (await identifier.identify(bearer(again["shopper"]), None)).id == shopper.id
    banner = print_tokens(tokens)
    assert banner.splitlines()[0].startswith("export SHOPPER_TOKEN=ey")
