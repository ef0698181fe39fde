"""What the gateway tells OAuth clients: RFC 9728 protected-resource metadata and the 401 challenge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import IdentityConfig
from gateway.errors import GatewayError

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource_url: str, path: str = "/mcp") -> str:
    """Where the metadata of `resource_url + path` lives (RFC 9728 §3: the well-known prefix, then the path)."""
    return f"{resource_url.rstrip('/')}{WELL_KNOWN}{path}"


def protected_resource_metadata(resource_url: str, config: IdentityConfig, path: str = "/mcp") -> dict[str, Any]:
    """RFC 9728 metadata for the MCP endpoint at `resource_url + path`."""
    servers = list(dict.fromkeys(issuer.issuer for issuer in config.issuers))
    return {
        "resource": f"{resource_url.rstrip('/')}{path}",
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Customs MCP gateway",
    }


def www_authenticate(resource_url: str, error: str | None = None, path: str = "/mcp") -> str:
    """The `WWW-Authenticate` value of a 401 (RFC 6750 §3 + RFC 9728 §5.1).

    `error="invalid_token"` only when a token was presented; a request without credentials gets no
    error code, as RFC 6750 asks.
    """
    value = f'Bearer resource_metadata="{metadata_url(resource_url, path)}"'
    return f'{value}, error="{error}"' if error else value


def reject_query_token(query: Mapping[str, str], resource_url: str | None = None, path: str = "/mcp") -> None:
    """Tokens in the URL leak into logs and referrers (OAuth 2.1 §5.1.1 forbids them): 401."""
    if "access_token" in query:
        headers = ({"WWW-Authenticate": www_authenticate(resource_url, "invalid_request", path)}
                   if resource_url else None)
        raise GatewayError("unauthenticated", "Tokens in the query string are not accepted", headers=headers)
