"""The binding key tells every part of a call apart, a delegation chain's actors included.

Its parts were joined with a separator and the chain's actors written out one by one, so a chain whose actors are
named like the markers after it ("tenant", "method") read as those markers: the agent calling through orchestrator,
"tenant" and "acme" with no tenant had the key of its call through orchestrator alone in tenant acme, and one
approval released both (likewise for "method" and a held prompt). The chain is now one part, as JSON."""

from __future__ import annotations

from gateway.approvals.model import binding_key

BASE = ("https://idp.test|agent", "payments", "pay", "sha256:abc")


def test_a_chain_cannot_pose_as_the_tenant_or_the_method() -> None:
    assert binding_key(*BASE, ("orch",), "tools/call", "acme") != \
        binding_key(*BASE, ("orch", "tenant", "acme"), "tools/call", None)
    assert binding_key(*BASE, ("orch",), "prompts/get", None) != \
        binding_key(*BASE, ("orch", "method", "prompts/get"), "tools/call", None)
    assert binding_key(*BASE, ("a\x1fb",)) != binding_key(*BASE, ("a", "b"))  # the separator inside an actor's id


def test_calls_without_a_chain_keep_their_key() -> None:
    """What older replicas computed for calls with no chain, so a retry on either version still joins the item."""
    import hashlib

    def old(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    assert binding_key(*BASE) == old(*BASE)
    assert binding_key(*BASE, (), "tools/call", "acme") == old(*BASE, "tenant", "acme")
    assert binding_key(*BASE, (), "prompts/get", "acme") == old(*BASE, "method", "prompts/get", "tenant", "acme")
