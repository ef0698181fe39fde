"""Workload identity: who is calling (bearer JWT, SPIFFE, delegation chain), built from the `identity` config.

The HTTP edge calls `identify(headers, peer_cert)` once per request; see docs/identity.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from gateway.config.model import MAX_CHAIN_DEPTH, AgentRecord, IdentityConfig
from gateway.context import Principal
from gateway.identity.identifier import AnonymousIdentifier, JwtIdentifier, default_audience
from gateway.identity.metadata import metadata_url, protected_resource_metadata, reject_query_token, www_authenticate

__all__ = [
    "AnonymousIdentifier",
    "JwtIdentifier",
    "ManagedIdentifier",
    "build_identifier",
    "default_audience",
    "metadata_url",
    "protected_resource_metadata",
    "reject_query_token",
    "www_authenticate",
]


class ManagedIdentifier(Protocol):
    """An Identifier (gateway.pipeline) that owns resources: start() before use, close() at shutdown."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None,
                       resource_path: str = "/mcp") -> Principal: ...


def build_identifier(config: IdentityConfig, agents: Mapping[str, AgentRecord], resource_url: str,
                     http: aiohttp.ClientSession | None, *,
                     max_chain_depth: int = MAX_CHAIN_DEPTH) -> ManagedIdentifier:
    """The identifier for `identity.mode`. Key files are read here (KeySetError, a ValueError, when unusable);
    JWKS URLs are fetched in start(). A token whose `act` chain is deeper than `max_chain_depth` is refused."""
    if config.mode == "anonymous":
        return AnonymousIdentifier(config)
    return JwtIdentifier(config, agents, resource_url, http, max_chain_depth=max_chain_depth)
