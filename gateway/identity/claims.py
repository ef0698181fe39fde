"""Verified token claims → the Principal identify gives for them (pure: no keys, no clock, no I/O).

The gateway's identifier calls `token_principal` once a token's signature, audience and times are verified;
the offline policy commands (`customs policy explain|test --config`) call it on claims they are given, so
both build the principal from one piece of code: the issuer's `claims:` mapping, the `agents:` registry,
`policies.max_chain_depth`, the issuer's `spiffe_trust_domains` and the repeated-agent check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import MAX_CHAIN_DEPTH, AgentRecord, IssuerConfig
from gateway.context import Principal
from gateway.identity.chain import (
    actor_id,
    build_chain,
    check_repeated_agents,
    claim_mapping,
    map_claims,
    registry_attributes,
)
from gateway.identity.jwt import TokenError
from gateway.identity.spiffe import is_spiffe_uri, parse_spiffe_id

MTLS_ISSUER = "mtls"


def token_principal(claims: Mapping[str, Any], issuer: IssuerConfig, agents: Mapping[str, AgentRecord], *,
                    mapping: Mapping[str, str] | None = None, max_chain_depth: int = MAX_CHAIN_DEPTH,
                    svid: str | None = None, token: str | None = None,
                    expires_at: float | None = None) -> Principal:
    """The principal of a token of `issuer` carrying `claims`; ChainError or TokenError when identify refuses it.

    `mapping` is the issuer's effective claim mapping (computed from `issuer.claims` when not given), `svid` the
    SPIFFE ID of the client certificate the token came with (its `sub`, when a SPIFFE ID, must be that one)."""
    subject = actor_id(claims.get("sub"))
    if svid is not None and is_spiffe_uri(subject) and subject != svid:
        raise TokenError("Token subject does not match the client certificate's SPIFFE ID")
    mapping = claim_mapping(issuer.claims) if mapping is None else mapping
    attributes = map_claims(claims, mapping) or registry_attributes(subject, agents)
    chain = build_chain(claims.get("act"), mapping, agents, min(max_chain_depth, MAX_CHAIN_DEPTH), subject)
    if issuer.spiffe_trust_domains is not None:
        check_trust_domains([subject, *(actor.id for actor in chain)], issuer.spiffe_trust_domains, issuer.issuer)
    check_repeated_agents(subject, attributes, chain)  # Cedar holds one Agent per id: one set of attributes
    return Principal(id=subject, issuer=issuer.issuer, subject=subject, attributes=attributes, chain=chain,
                     token=token, expires_at=expires_at)


def mtls_principal(svid: str, agents: Mapping[str, AgentRecord], expires_at: float | None = None) -> Principal:
    """The principal of a verified client SVID presented without a token: attributes from the registry only."""
    return Principal(id=svid, issuer=MTLS_ISSUER, subject=svid, attributes=registry_attributes(svid, agents),
                     expires_at=expires_at)


def check_trust_domains(ids: list[str], allowed: tuple[str, ...], issuer: str) -> None:
    """The issuer vouches only for SPIFFE IDs of its own trust domains: a token naming another one is refused,
    whatever the policies would say of it. The ids were validated by `actor_id`."""
    for position, ident in enumerate(ids):
        if not is_spiffe_uri(ident):
            continue
        domain = parse_spiffe_id(ident).trust_domain
        if domain not in allowed:
            who = "subject" if position == 0 else "delegation actor"
            raise TokenError(f"Token {who}'s SPIFFE trust domain {domain!r} is not one issuer {issuer} may assert")
