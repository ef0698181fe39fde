"""What the gateway tells OAuth clients: RFC 9728 protected-resource metadata and the 401 challenge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from gateway.config.model import IdentityConfig
from gateway.errors import GatewayError

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def split_base(resource_url: str) -> tuple[str, str]:
    """The gateway's base URL as (scheme://authority, path): `https://gw.example/customs` gives
    (`https://gw.example`, `/customs`), a base without a path gives an empty path. The text is cut, not
    re-serialised, so the URL keeps the spelling the operator configured."""
    base = resource_url.rstrip("/")
    slash = base.find("/", base.find("://") + 3)
    return (base, "") if slash < 0 else (base[:slash], base[slash:])


def metadata_url(resource_url: str, path: str = "/mcp") -> str:
    """Where the metadata of `resource_url + path` lives: RFC 9728 §3.1 inserts the well-known prefix between
    the host and the path, so a base with a path (a gateway under a proxy's prefix) puts it after the prefix."""
    origin, prefix = split_base(resource_url)
    return f"{origin}{WELL_KNOWN}{prefix}{path}"


def metadata_endpoint(raw_path: str, resource_url: str) -> str | None:
    """Which endpoint (`/mcp`, `/mcp/{name}`) the request path `raw_path` (`WELL_KNOWN + tail`, as sent: still
    percent-encoded) asks about, or None.

    Any `/mcp/{name}` is answered, a configured upstream or not: metadata published for configured names only told
    them apart to anyone, as the 401 of `/mcp/{name}` no longer does (its challenge points here for every name).
    The name comes back percent-encoded as that challenge writes it (a configured name, `[a-z0-9_-]+`, reads the
    same), so `…/mcp/a%2Fb` is the one name `a/b` and `…/mcp/a/b` no endpoint: the path is split before decoding.

    Behind a proxy under a prefix the RFC 9728 URL (`/.well-known/oauth-protected-resource/customs/mcp`) is
    outside that prefix, and the operator routes it to the gateway either as it is or with the prefix cut out
    as from every other path (`…/mcp`); both are answered.
    """
    segments = [unquote(part) for part in raw_path.split("/")]
    if segments[:3] != ["", *WELL_KNOWN.split("/")[1:]]:
        return None
    tail = segments[3:]
    prefix = [unquote(part) for part in split_base(resource_url)[1].split("/")[1:]]
    if prefix and tail[:len(prefix)] == prefix and (found := _endpoint(tail[len(prefix):])) is not None:
        return found
    return _endpoint(tail)


def _endpoint(segments: list[str]) -> str | None:
    if segments == ["mcp"]:
        return "/mcp"
    if len(segments) == 2 and segments[0] == "mcp" and segments[1]:
        return f"/mcp/{quote(segments[1], safe='')}"
    return None


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
