"""Demo identities for `customs demo`: the demo issuer's keys, its `identity` config, and tokens for demo agents.

The key pair and JWKS are the ones `gateway.demo.delegate` (and compose/agent.py) already use
(`<dir>/signing-key.pem`, `<dir>/jwks.json`, issuer DEMO_ISSUER, ES256, kid DEMO_KID), so every demo
part trusts and mints with the same issuer. Typical use::

    key = write_demo_keys(directory)                      # once; an existing pair is kept
    identity = demo_identity_config(directory)            # → config["identity"]
    tokens = mint_demo_tokens(directory, "http://127.0.0.1:8700/mcp")   # name → bearer token
    print_tokens(tokens)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.demo.delegate import DEMO_ISSUER, JWKS_FILE, mint_token, write_demo_keys

__all__ = ["DEMO_ISSUER", "DEMO_PRINCIPALS", "DemoPrincipal", "demo_agents_registry", "demo_identity_config",
           "mint_demo_tokens", "print_tokens", "write_demo_keys"]


@dataclass(frozen=True)
class DemoPrincipal:
    """A demo caller: its `sub`, the claims its token carries, and an optional delegation chain."""

    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    act: Mapping[str, Any] | None = None
    note: str = ""


DEMO_PRINCIPALS: Mapping[str, DemoPrincipal] = {
    "shopper": DemoPrincipal("spiffe://customs.demo/agent/shopper", {"tenant": "acme", "owner": "bob"},
                             note="a well-behaved agent of tenant acme, owned by bob"),
    "untrusted": DemoPrincipal("spiffe://customs.demo/agent/untrusted", {"tenant": "acme"},
                               note="an agent the shipped guards policy denies"),
    "delegated": DemoPrincipal("spiffe://customs.demo/agent/shopper", {"tenant": "acme", "owner": "bob"},
                               act={"sub": "spiffe://customs.demo/agent/orchestrator"},
                               note="the shopper acting through the orchestrator (RFC 8693 act)"),
    "alice": DemoPrincipal("alice", {"groups": ["approvers", "finance"], "name": "Alice"},
                           note="a person who may approve held calls, payments included"),
    # bob is in finance too, but owns the shopper: nobody approves a call made on their own behalf
    "bob": DemoPrincipal("bob", {"groups": ["approvers", "finance"], "name": "Bob"},
                         note="owns the shopper, so he may not approve its calls (403 self_approval)"),
    "admin": DemoPrincipal("carol", {"groups": ["admins"], "name": "Carol"},
                           note="an administrator: `customs tools list|approve` (pinned and quarantined tools)"),
}


def demo_agents_registry() -> dict[str, dict[str, Any]]:
    """The `agents:` config registry for actors that appear in demo chains without their own claims."""
    return {"spiffe://customs.demo/agent/orchestrator": {"tenant": "acme", "trust": "high"}}


def demo_identity_config(directory: Path, audience: str | None = None) -> dict[str, Any]:
    """The `identity:` config section trusting the demo issuer (JWKS file in `directory`)."""
    issuer: dict[str, Any] = {"issuer": DEMO_ISSUER, "jwks_file": str(directory / JWKS_FILE),
                              "algorithms": ["ES256"]}
    if audience is not None:
        issuer["audience"] = audience
    return {"mode": "jwt", "issuers": [issuer], "clock_skew_s": 30}


def mint_demo_tokens(directory: Path, audience: str, *, ttl_s: int = 3600,
                     principals: Mapping[str, DemoPrincipal] = DEMO_PRINCIPALS) -> dict[str, str]:
    """Bearer tokens (name → JWT) for the demo principals; creates the demo keys when missing."""
    key_path = write_demo_keys(directory)
    return {name: mint_token(key_path, subject=who.subject, audience=audience, claims=dict(who.claims),
                             act=dict(who.act) if who.act is not None else None, ttl_s=ttl_s)
            for name, who in principals.items()}


def print_tokens(tokens: Mapping[str, str], principals: Mapping[str, DemoPrincipal] = DEMO_PRINCIPALS) -> str:
    """Human-readable lines for the demo banner (`export NAME_TOKEN=…  # note`)."""
    lines = []
    for name, token in tokens.items():
        who = principals.get(name)
        note = f"  # {who.subject}: {who.note}" if who else ""
        lines.append(f"export {name.upper()}_TOKEN={token}{note}")
    return "\n".join(lines)

