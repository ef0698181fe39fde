"""Signing keys: generation, 0600 persistence, reload, rotation with retention, algorithms, bad files."""

from __future__ import annotations

import stat

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config.model import SigningConfig
from gateway.credentials.keys import SigningKeys
from tests.credentials.helpers import Clock


def ring(tmp_path, clock: Clock, algorithm: str = "EdDSA", retain_s: float = 120) -> SigningKeys:
    return SigningKeys(SigningConfig(key_dir=tmp_path / "keys", algorithm=algorithm), retain_s=retain_s,
                       clock=clock)


def test_generated_key_is_persisted_0600_and_reloaded(tmp_path, clock) -> None:
    keys = ring(tmp_path, clock)
    keys.load()
    files = list((tmp_path / "keys").glob("*.pem"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    again = ring(tmp_path, clock)
    again.load()
    assert again.current.kid == keys.current.kid
    token = jwt.encode({"x": 1}, keys.current.private_key, algorithm="EdDSA")
    assert jwt.decode(token, again.public_key(keys.current.kid), algorithms=["EdDSA"]) == {"x": 1}


def test_es256_keys_and_jwks_shape(tmp_path, clock) -> None:
    keys = ring(tmp_path, clock, "ES256")
    keys.load()
    (jwk,) = keys.jwks()["keys"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert jwk["kid"] == keys.current.kid and "d" not in jwk
    assert jwt.PyJWK(jwk).algorithm_name == "ES256"


def test_rotation_keeps_old_key_published_until_retention(tmp_path, clock) -> None:
    keys = ring(tmp_path, clock, retain_s=120)
    keys.load()
    old = keys.current
    clock.advance(10)
    new = keys.rotate()
    assert keys.current is new and new.kid != old.kid
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new.kid, old.kid]
    clock.advance(119)
    assert keys.prune() == [] and old.path.exists()
    clock.advance(2)
    assert keys.prune() == [old.kid]
    assert not old.path.exists()
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new.kid]
    reloaded = ring(tmp_path, clock)
    reloaded.load()
    assert reloaded.current.kid == new.kid  # the newest signs after a restart too


def test_algorithm_change_generates_a_new_signer_and_keeps_the_old_key(tmp_path, clock) -> None:
    first = ring(tmp_path, clock, "EdDSA")
    first.load()
    clock.advance(1)
    second = ring(tmp_path, clock, "ES256")
    second.load()
    assert second.current.algorithm == "ES256"
    assert {k["alg"] for k in second.jwks()["keys"]} == {"EdDSA", "ES256"}


def test_operator_key_loaded_and_permissions_tightened_bad_files_ignored(tmp_path, clock) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    operator = key_dir / "operator.pem"
    operator.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    operator.chmod(0o644)
    (key_dir / "garbage.pem").write_text("not a key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (key_dir / "rsa.pem").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    keys = ring(tmp_path, clock, "ES256")
    keys.load()
    assert len(keys.keys) == 1 and keys.current.path == operator
    assert stat.S_IMODE(operator.stat().st_mode) == 0o600
