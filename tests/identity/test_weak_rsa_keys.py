"""A token signed with an RSA key shorter than 2048 bits is refused (RFC 7518 §3.3: RS*/PS* keys MUST be 2048 bits
or larger; RFC 8725 §3.5). Such a key in the issuer's own set (a `jwks_file`, `jwks_url` or `pem_file` left from a
test, or an IdP's legacy key) can be factored, so whoever did could sign any agent's token: it verified them, PyJWT
only warning (InsecureKeyLengthWarning) on every call while the gateway accepted the token.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.cli import main
from gateway.errors import GatewayError
from tests.identity.conftest import AUDIENCE, MakeIdentifier, bearer
from tests.support.tokens import SigningKey, TestIssuer

SHOPPER = "spiffe://acme.test/agent/shopper"


def _weak_issuer(tmp_path: Path, bits: int) -> TestIssuer:
    issuer = TestIssuer(tmp_path, algorithms=("RS256",), name=f"weak{bits}")
    issuer.keys["RS256"] = SigningKey("RS256", f"weak-{bits}",
                                      rsa.generate_private_key(public_exponent=65537, key_size=bits))
    issuer.write_jwks()
    return issuer


@pytest.mark.parametrize("source", ["file", "pem"])
async def test_a_token_of_a_1024_bit_rsa_key_is_refused(tmp_path: Path, make_identifier: MakeIdentifier,
                                                         source: str) -> None:
    issuer = _weak_issuer(tmp_path, 1024)
    identifier = await make_identifier(issuer.config(source=source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = issuer.mint(SHOPPER, aud=AUDIENCE)  # PyJWT warns when signing with such a key
    # Refused, not warned about (warnings are errors here; serve only logged one and accepted the token).
    with pytest.raises(GatewayError) as caught:
        await identifier.identify(bearer(token), None)
    assert caught.value.reason == "unauthenticated"
    assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"]
    assert "RSA key is 1024 bits" in caught.value.message and "2048" in caught.value.message, caught.value.message


async def test_a_2048_bit_rsa_key_still_verifies(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    issuer = _weak_issuer(tmp_path, 2048)
    identifier = await make_identifier(issuer.config())
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE)), None)).id == SHOPPER
    assert json.loads(issuer.jwks_path.read_text())["keys"][0]["kid"] == "weak-2048"


@pytest.mark.parametrize("source", ["file", "pem"])
async def test_a_key_set_of_weak_rsa_keys_only_is_not_ready_and_says_why(tmp_path: Path, source: str,
                                                                         make_identifier: MakeIdentifier) -> None:
    """Every token of such an issuer is refused, so /readyz says so (as for keys of the wrong type), naming the size."""
    issuer = _weak_issuer(tmp_path, 1024)
    identifier = await make_identifier(issuer.config(source=source))
    ready, detail = await identifier.readiness()
    path = str(issuer.jwks_path if source == "file" else issuer.pem_path("RS256"))
    kid = "weak-1024: " if source == "file" else "(no kid): "
    pinned = " alg RS256" if source == "file" else ""
    assert not ready and detail == {path: f"{path}: no key fits the issuer's algorithms RS256 "
                                          f"(keys: {kid}RSA 1024 bits, under 2048{pinned})"}, detail


def test_config_check_refuses_a_key_file_of_weak_rsa_keys_only(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    issuer = _weak_issuer(tmp_path, 1024)
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [{"name": "ok", "url": "http://127.0.0.1:1/mcp"}],
                                    "identity": {"mode": "jwt", "issuers": [issuer.config()]}}))
    code = main(["config", "check", str(path)])
    err = capsys.readouterr().err
    line = (f"  identity.issuers[0].jwks_file: {issuer.jwks_path}: no key fits the issuer's algorithms RS256 "
            f"(keys: weak-1024: RSA 1024 bits, under 2048 alg RS256)")
    assert code == 2 and line in err.splitlines(), err
