"""SPIFFE ID validation table and URI SAN extraction (peercert dict and DER)."""

from __future__ import annotations

import pytest

from gateway.identity.spiffe import (
    InvalidSpiffeId,
    parse_spiffe_id,
    svid_id,
    uri_sans_from_der,
    uri_sans_from_peercert,
)
from tests.identity.certs import make_ca, make_leaf

VALID = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/workload", "example.org", "/workload"),
    ("spiffe://prod.acme-corp_1.example/ns/default/sa/agent.v2", "prod.acme-corp_1.example", "/ns/default/sa/agent.v2"),
    ("spiffe://td/A-Z_a.z-09", "td", "/A-Z_a.z-09"),
    ("spiffe://td/..a/a..", "td", "/..a/a.."),
]

INVALID = [
    ("", "start with spiffe://"),
    ("http://example.org/x", "start with spiffe://"),
    ("SPIFFE://example.org/x", "start with spiffe://"),
    ("spiffe:/example.org/x", "start with spiffe://"),
    ("spiffe://", "empty trust domain"),
    ("spiffe:///path", "empty trust domain"),
    ("spiffe://Example.org/x", "trust domain may only"),
    ("spiffe://example.org:8443/x", "trust domain may only"),
    ("spiffe://user@example.org/x", "trust domain may only"),
    ("spiffe://example.org?x=1", "trust domain may only"),
    ("spiffe://example.org#frag", "trust domain may only"),
    ("spiffe://exa%41mple.org/x", "trust domain may only"),
    ("spiffe://" + "a" * 256, "longer than 255"),
    ("spiffe://example.org/", "must not end with '/'"),
    ("spiffe://example.org/a/", "must not end with '/'"),
    ("spiffe://example.org//a", "empty segment"),
    ("spiffe://example.org/./a", "'.' or '..'"),
    ("spiffe://example.org/a/..", "'.' or '..'"),
    ("spiffe://example.org/a?x=1", "may only contain"),
    ("spiffe://example.org/a#f", "may only contain"),
    ("spiffe://example.org/a%2Fb", "may only contain"),
    ("spiffe://example.org/a b", "may only contain"),
    ("spiffe://example.org/ägent", "may only contain"),
    ("spiffe://example.org/" + "a" * 2040, "longer than 2048"),
]


@pytest.mark.parametrize(("value", "domain", "path"), VALID, ids=[v[0] for v in VALID])
def test_valid_spiffe_ids(value: str, domain: str, path: str) -> None:
    parsed = parse_spiffe_id(value)
    assert (parsed.trust_domain, parsed.path, str(parsed)) == (domain, path, value)


@pytest.mark.parametrize(("value", "message"), INVALID, ids=[v[0][:40] or "empty" for v in INVALID])
def test_invalid_spiffe_ids(value: str, message: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=message.replace(".", r"\.").replace("?", r"\?")):
        parse_spiffe_id(value)


def test_svid_id_rules() -> None:
    assert svid_id([]) is None
    assert svid_id(["https://example.org/not-spiffe"]) is None
    assert svid_id(["spiffe://acme.test/agent/a"]) == "spiffe://acme.test/agent/a"
    with pytest.raises(InvalidSpiffeId, match="exactly one URI SAN"):
        svid_id(["spiffe://acme.test/agent/a", "spiffe://acme.test/agent/b"])
    with pytest.raises(InvalidSpiffeId, match="exactly one URI SAN"):
        svid_id(["spiffe://acme.test/agent/a", "https://example.org"])
    with pytest.raises(InvalidSpiffeId):
        svid_id(["spiffe://ACME/agent"])


def test_uri_sans_from_peercert_dict() -> None:
    cert = {"subject": ((("commonName", "agent"),),),
            "subjectAltName": (("DNS", "agent.local"), ("URI", "spiffe://acme.test/agent/a"))}
    assert uri_sans_from_peercert(cert) == ["spiffe://acme.test/agent/a"]
    assert uri_sans_from_peercert({}) == []


def test_uri_sans_from_der_certificate() -> None:
    ca = make_ca()
    with_san = make_leaf(ca, uris=["spiffe://acme.test/agent/a"], dns=["agent.local"])
    without = make_leaf(ca, uris=[], dns=[])
    assert uri_sans_from_der(with_san.der) == ["spiffe://acme.test/agent/a"]
    assert uri_sans_from_der(without.der) == []
