"""Signing keys: generation (dev only unless opted in), 0600 persistence, reload, scheduled rotation, retention."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.cli import main
from gateway.config import Config, ConfigError
from gateway.config.model import SigningConfig
from gateway.credentials import CredentialService
from gateway.credentials.keys import SigningKeys, missing_key_problems, thumbprint
from tests.credentials.helpers import Clock, make_config

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


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


# ---- key generation only where allowed; on-demand (reload) and scheduled rotation ----

def minted_config(tmp_path, **signing: object) -> Config:
    return make_config(tmp_path, [{"name": "pay", "url": "http://127.0.0.1:9/mcp",
                                   "credentials": {"mode": "minted", "ttl_s": 30}}],
                       environment="production", signing={"key_dir": str(tmp_path / "keys"), **signing})


def write_key(path, mtime: float | None = None) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return thumbprint(key)


async def test_outside_dev_a_missing_key_refuses_start_with_its_path(tmp_path, capsys) -> None:
    config = minted_config(tmp_path)
    service = CredentialService(config)
    with pytest.raises(ConfigError) as info:
        await service.start()
    assert str(tmp_path / "keys") in info.value.problems[0] and "signing.generate" in info.value.problems[0]
    assert not (tmp_path / "keys").exists()  # nothing generated, not even the directory
    (problem,) = missing_key_problems(config)  # what `config check` and serve's preflight report
    assert problem.startswith(f"signing.key_dir: {tmp_path / 'keys'}: no EdDSA signing key")
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [{"name": "pay", "url": "http://127.0.0.1:9/mcp",
                                                   "credentials": {"mode": "minted"}}],
                                    "policies": {"dir": str(SHIPPED)}, "environment": "production",
                                    "signing": {"key_dir": str(tmp_path / "keys")}}))
    assert main(["config", "check", str(path)]) == 2
    assert f"signing.key_dir: {tmp_path / 'keys'}: no EdDSA signing key" in capsys.readouterr().err


async def test_outside_dev_an_operator_key_or_opt_in_starts(tmp_path) -> None:
    opted_in = CredentialService(minted_config(tmp_path / "a", generate=True))
    await opted_in.start()
    assert len(list((tmp_path / "a" / "keys").glob("k*.pem"))) == 1
    await opted_in.close()
    kid = write_key(tmp_path / "b" / "keys" / "mounted.pem")
    config = minted_config(tmp_path / "b")
    assert missing_key_problems(config) == []
    provided = CredentialService(config)
    await provided.start()
    assert provided.keys.current.kid == kid and len(list((tmp_path / "b" / "keys").glob("*.pem"))) == 1
    await provided.close()
    # No upstream needs a signed token: nothing to refuse, nothing generated, an empty JWKS.
    unsigned = CredentialService(make_config(tmp_path / "c", [], environment="production",
                                             signing={"key_dir": str(tmp_path / "c" / "keys")}))
    await unsigned.start()
    assert unsigned.keys.jwks() == {"keys": []} and not (tmp_path / "c" / "keys").exists()
    await unsigned.close()


def test_reload_publishes_a_dropped_key_as_signer_and_withdraws_removed_ones(tmp_path, clock) -> None:
    keys = ring(tmp_path, clock)
    keys.load()
    old = keys.current
    assert keys.reload() is False  # nothing changed on disk: no rotation
    newer = write_key(tmp_path / "keys" / "operator-2.pem", mtime=old.created + 5)
    assert keys.reload() is True
    assert keys.current.kid == newer and [k["kid"] for k in keys.jwks()["keys"]] == [newer, old.kid]
    stale = write_key(tmp_path / "keys" / "stale.pem", mtime=old.created - 5)  # copied with an old mtime
    assert keys.reload() is True and keys.current.kid == newer and keys.algorithm_of(stale) == "EdDSA"
    (tmp_path / "keys" / "stale.pem").unlink()
    assert keys.reload() is True and keys.algorithm_of(stale) is None
    for path in (tmp_path / "keys").glob("*.pem"):
        path.unlink()
    assert keys.reload() is False and keys.current.kid == newer  # an emptied directory keeps the ring


def test_scheduled_rotation_and_retirement_leave_operator_files_alone(tmp_path, clock) -> None:
    operator = write_key(tmp_path / "keys" / "operator.pem", mtime=clock() - 1)
    keys = SigningKeys(SigningConfig(key_dir=tmp_path / "keys", rotate_every_s=100), retain_s=30, clock=clock)
    keys.load()
    assert keys.current.kid == operator and keys.next_due() == clock() - 1 + 100
    clock.advance(98)
    assert keys.maintain() == [] and keys.current.kid == operator
    clock.advance(1)
    assert keys.maintain() == [] and keys.current.kid != operator  # due: a generated key signs
    assert keys.next_due() == clock() + 30  # the operator key leaves the JWKS then
    clock.advance(30)
    assert keys.maintain() == [operator] and keys.algorithm_of(operator) is None
    assert (tmp_path / "keys" / "operator.pem").exists()  # perhaps a read-only mount: never deleted
    assert keys.next_due() == keys.current.created + 100


async def test_close_right_after_a_rotation_or_reload_returns(tmp_path, clock) -> None:
    # The key task wakes on the change and is cancelled in the same loop turn: the cancel must not be lost.
    for change in ("rotate", "reload"):
        service = CredentialService(minted_config(tmp_path / change, generate=True), clock=clock)
        await service.start()
        if change == "rotate":
            service.rotate_keys()
        else:
            write_key(service.keys.key_dir / "operator.pem", mtime=service.keys.current.created + 5)
            assert await service.reload_keys() is True
        closing = asyncio.create_task(service.close())
        done, _ = await asyncio.wait({closing}, timeout=10)  # a deadline: not wait_for, close may swallow its cancel
        assert closing in done, f"close() hung after a {change}"


def test_an_unusable_key_file_is_named_with_the_reason(tmp_path, caplog) -> None:
    """An operator's key that cannot sign was reported as `ignoring signing key file key.pem: TypeError` (or
    ValueError), and config check then said there was no key at all ("put a key there"): the key put there,
    encrypted or the public half, was not named. The warning and the problem now say what is wrong with each."""
    key = ed25519.Ed25519PrivateKey.generate()
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "enc.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.BestAvailableEncryption(b"secret")))
    (key_dir / "pub.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    (key_dir / "garbage.pem").write_text("not a key")
    with caplog.at_level("WARNING", logger="customs.credentials.keys"):
        (problem,) = missing_key_problems(minted_config(tmp_path))
    reasons = {"enc.pem": "encrypted with a password", "pub.pem": "a public key or certificate, not the private key",
               "garbage.pem": "not a PEM private key"}
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in problem, problem
        assert any(r.getMessage().startswith(f"ignoring signing key file {name}: {reason}") for r in caplog.records)
    assert problem.startswith(f"signing.key_dir: {key_dir}: no EdDSA signing key")


def test_a_new_key_of_another_algorithm_is_named_as_such_on_reload(tmp_path, clock, caplog) -> None:
    """A P-256 key dropped into an EdDSA ring is published and never signs. The reload's warning said it was
    older than the signer and to give it a newer modification time, which changes nothing."""
    keys = ring(tmp_path, clock)
    keys.load()
    signer = keys.current
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "keys" / "p256.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.utime(path, (signer.created + 5, signer.created + 5))  # newer than the signer
    with caplog.at_level("WARNING", logger="customs.credentials.keys"):
        assert keys.reload() is True
    assert keys.current.kid == signer.kid and keys.algorithm_of(thumbprint(key)) == "ES256"
    messages = [r.getMessage() for r in caplog.records]
    assert any("p256.pem" in m and "is an ES256 key and signing.algorithm is EdDSA" in m for m in messages), messages
    assert not any("newer modification time" in m for m in messages), messages
