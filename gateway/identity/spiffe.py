"""SPIFFE IDs in identity: extraction from an X.509-SVID's URI SAN (an X.509-SVID carries exactly one URI SAN,
the SPIFFE ID); parsing and validation live in `gateway.spiffeid` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509

from gateway.spiffeid import MAX_ID_BYTES as MAX_ID_BYTES
from gateway.spiffeid import MAX_TRUST_DOMAIN as MAX_TRUST_DOMAIN
from gateway.spiffeid import SCHEME as SCHEME
from gateway.spiffeid import InvalidSpiffeId as InvalidSpiffeId
from gateway.spiffeid import SpiffeId as SpiffeId
from gateway.spiffeid import is_spiffe_uri as is_spiffe_uri
from gateway.spiffeid import parse_spiffe_id as parse_spiffe_id
from gateway.spiffeid import validate_spiffe_id as validate_spiffe_id
from gateway.spiffeid import validate_trust_domain as validate_trust_domain


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
