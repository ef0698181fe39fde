"""SPIFFE IDs per the SPIFFE-ID spec: parsing and validation, with no gateway runtime behind it.

A SPIFFE ID is `spiffe://<trust-domain><path>`: lower-case scheme, a trust domain of
[a-z0-9.-_] (no port, no userinfo), an optional path of non-empty segments of [A-Za-z0-9.-_]
that are not `.` or `..`, no trailing slash, no query, no fragment, at most 2048 bytes.
Kept out of the `gateway.identity` package (whose import brings aiohttp and the config) so that the policy
loader, which `customs policy validate` runs alone, can refuse a policy naming an agent no token can be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeId(ValueError):
    """The string is not a valid SPIFFE ID (the message says why, without echoing long input)."""


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"


def is_spiffe_uri(value: str) -> bool:
    """True when `value` claims to be a SPIFFE ID (scheme prefix, any case); it may still be invalid."""
    return value[: len(SCHEME)].lower() == SCHEME


def parse_spiffe_id(value: str) -> SpiffeId:
    """Validate and split a SPIFFE ID; raises InvalidSpiffeId."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidSpiffeId("SPIFFE ID longer than 2048 bytes")
    if not value.startswith(SCHEME):
        raise InvalidSpiffeId("SPIFFE ID must start with spiffe:// (lower case)")
    rest = value[len(SCHEME):]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    _check_trust_domain(trust_domain)
    if path:
        _check_path(path)
    return SpiffeId(trust_domain, path)


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` unchanged when it is a valid SPIFFE trust domain name; raises InvalidSpiffeId."""
    _check_trust_domain(trust_domain)
    return trust_domain


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise InvalidSpiffeId("SPIFFE ID has an empty trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        raise InvalidSpiffeId("SPIFFE trust domain longer than 255 characters")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        # Catches ports (':'), userinfo ('@'), query ('?'), fragment ('#'), upper case, percent-encoding.
        raise InvalidSpiffeId("SPIFFE trust domain may only contain a-z, 0-9, '.', '-' and '_'")


def _check_path(path: str) -> None:
    if path.endswith("/"):
        raise InvalidSpiffeId("SPIFFE ID path must not end with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise InvalidSpiffeId("SPIFFE ID path has an empty segment")
        if segment in (".", ".."):
            raise InvalidSpiffeId("SPIFFE ID path has a '.' or '..' segment")
        if not _SEGMENT_RE.fullmatch(segment):
            raise InvalidSpiffeId("SPIFFE ID path may only contain A-Z, a-z, 0-9, '.', '-' and '_'")


def validate_spiffe_id(value: str) -> str:
    """Return `value` unchanged when valid; raises InvalidSpiffeId."""
    parse_spiffe_id(value)
    return value
