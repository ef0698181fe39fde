"""SPIFFE IDs: validation per the SPIFFE-ID spec, and extraction from an X.509-SVID's URI SAN.

A SPIFFE ID is `spiffe://<trust-domain><path>`: lower-case scheme, a trust domain of
[a-z0-9.-_] (no port, no userinfo), an optional path of non-empty segments of [A-Za-z0-9.-_]
that are not `.` or `..`, no trailing slash, no query, no fragment, at most 2048 bytes.
An X.509-SVID carries exactly one URI SAN, the SPIFFE ID.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

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


def uri_sans_from_peercert(cert: Mapping[str, Any]) -> list[str]:
    """The URI SANs of a certificate as `ssl.SSLSocket.getpeercert()` reports it (a dict)."""
    sans = cert.get("subjectAltName") or ()
    return [str(value) for kind, value in sans if kind == "URI"]


def uri_sans_from_der(der: bytes) -> list[str]:
    """The URI SANs of a DER certificate (`getpeercert(binary_form=True)`)."""
    certificate = x509.load_der_x509_certificate(der)
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in extension.value.get_values_for_type(x509.UniformResourceIdentifier)]


def svid_id(uri_sans: list[str]) -> str | None:
    """The SPIFFE ID of an X.509-SVID from its URI SANs: None when there is no SPIFFE SAN.

    Raises InvalidSpiffeId when the certificate is not a valid SVID: more than one URI SAN
    (the spec allows exactly one) or a malformed SPIFFE ID.
    """
    spiffe = [uri for uri in uri_sans if is_spiffe_uri(uri)]
    if not spiffe:
        return None
    if len(uri_sans) != 1:
        raise InvalidSpiffeId("an X.509-SVID must carry exactly one URI SAN")
    return validate_spiffe_id(spiffe[0])
