"""Minted credentials: claims, audience, delegation chain, narrowing, TTL versus task end, per-task cache."""

from __future__ import annotations

import os

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.context import Principal
from gateway.credentials import CredentialService
from gateway.credentials.keys import thumbprint
from gateway.credentials.minter import refresh_margin
from gateway.errors import GatewayError
from tests.credentials.helpers import Clock, agent, make_config

UPSTREAMS = [
    {"name": "payments", "url": "http://127.0.0.1:9002/mcp",
     "credentials": {"mode": "minted", "ttl_s": 60, "narrow_to_args": ["account"]}},
    {"name": "crm", "url": "http://127.0.0.1:9003/mcp",
     "credentials": {"mode": "minted", "ttl_s": 30, "audience": "https://crm.example"}},
]


@pytest.fixture
async def service(tmp_path, clock: Clock):
    svc = CredentialService(make_config(tmp_path, UPSTREAMS), clock=clock)
    await svc.start()
    yield svc
    await svc.close()


def upstream(service: CredentialService, name: str):
    return service.stage.upstreams[name]


def decode(service: CredentialService, token: str, audience: str) -> dict:
    key = service.keys.current
    return jwt.decode(token, key.private_key.public_key(), algorithms=[key.algorithm], audience=audience,
                      options={"verify_exp": False, "verify_iat": False})


async def test_claims(service: CredentialService, clock: Clock) -> None:
    token, claims = await service.minter.mint(agent(), upstream(service, "payments"), ["pay"],
                                              {"account": "acme-1", "amount": 5}, "task-1")
    assert decode(service, token, "http://127.0.0.1:9002/mcp") == claims
    assert claims["iss"] == "http://127.0.0.1:8700"
    assert claims["sub"] == "spiffe://acme/agent-1"
    assert claims["act"] == {"sub": "spiffe://acme/orchestrator", "act": {"sub": "user:alice"}}
    assert claims["scope"] == "pay account:acme-1" and claims["task"] == "task-1"
    assert claims["args"] == {"account": "acme-1"}  # only the configured argument
    assert claims["iat"] == int(clock()) and claims["exp"] == int(clock()) + 60
    assert len(claims["jti"]) >= 16
    header = jwt.get_unverified_header(token)
    assert header["kid"] == service.keys.current.kid and header["alg"] == "EdDSA"


async def test_audience_defaults_and_overrides(service: CredentialService) -> None:
    _, crm = await service.minter.mint(agent(), upstream(service, "crm"), ["find"], {}, "t")
    assert crm["aud"] == "https://crm.example" and "args" not in crm and crm["exp"] - crm["iat"] == 30
    _, payments = await service.minter.mint(agent(), upstream(service, "payments"), ["pay"], {}, "t")
    assert payments["aud"] == "http://127.0.0.1:9002/mcp"  # default: the upstream's url (stdio ones take none)


async def test_no_chain_no_act_and_missing_narrowed_arg_is_null(service: CredentialService) -> None:
    lone = Principal(id="agent-2", issuer="https://idp.test", subject="agent-2")
    _, claims = await service.minter.mint(lone, upstream(service, "payments"), ["pay"], {"amount": 1}, "t")
    assert "act" not in claims and claims["args"] == {"account": None}
    assert claims["scope"] == "pay account=null"  # not passed: never mistaken for the string "null"


async def test_scope_names_the_tool_and_every_narrowed_value(tmp_path, clock: Clock) -> None:
    upstreams = [{"name": "git", "url": "http://127.0.0.1:9004/mcp",
                  "credentials": {"mode": "minted", "narrow_to_args": ["repo", "count", "label", "opts"]}},
                 {"name": "bare", "url": "http://127.0.0.1:9005/mcp", "credentials": {"mode": "minted"}}]
    svc = CredentialService(make_config(tmp_path, upstreams), clock=clock)
    await svc.start()
    try:
        git = upstream(svc, "git")
        args = {"repo": "acme/app b:c=d", "count": 5, "label": "5", "opts": {"b": True, "a": [1]}, "x": "y"}
        _, claims = await svc.minter.mint(agent(), git, ["push"], args, "t")
        assert claims["scope"].split() == ["push", "repo:acme%2Fapp%20b%3Ac%3Dd", "count=5", "label:5",
                                           "opts=%7B%22a%22%3A%5B1%5D%2C%22b%22%3Atrue%7D"]
        assert claims["args"] == {k: v for k, v in args.items() if k != "x"}  # the structured form stays
        _, session = await svc.minter.mint(agent(), git, [], {}, "t")
        assert session["scope"] == ""  # a session-level token names no tool and no argument
        _, plain = await svc.minter.mint(agent(), upstream(svc, "bare"), ["push"], args, "t")
        assert plain["scope"] == "push" and "args" not in plain  # without narrowing: as before
    finally:
        await svc.close()


async def test_exp_never_after_task_end(service: CredentialService, clock: Clock) -> None:
    _, claims = await service.minter.mint(agent(), upstream(service, "payments"), ["pay"], {}, "t",
                                          task_end=clock() + 20)
    assert claims["exp"] == int(clock() + 20)
    with pytest.raises(GatewayError) as err:
        await service.minter.mint(agent(), upstream(service, "payments"), ["pay"], {}, "t", task_end=clock() - 1)
    assert err.value.reason == "credential_unavailable" and err.value.data == {"task_ended": True}


async def test_cache_per_task_scope_and_narrowed_args(service: CredentialService, clock: Clock) -> None:
    pay = upstream(service, "payments")
    mint = service.minter.mint
    first, _ = await mint(agent(), pay, ["pay"], {"account": "a", "amount": 1}, "t1")
    assert (await mint(agent(), pay, ["pay"], {"account": "a", "amount": 2}, "t1"))[0] == first  # not narrowed
    assert (await mint(agent(), pay, ["pay"], {"account": "b"}, "t1"))[0] != first
    assert (await mint(agent(), pay, ["refund"], {"account": "a"}, "t1"))[0] != first
    assert (await mint(agent(), pay, ["pay"], {"account": "a"}, "t2"))[0] != first
    assert (await mint(agent(sub="other"), pay, ["pay"], {"account": "a"}, "t1"))[0] != first
    assert (await mint(agent(), pay, ["pay"], {"account": "a"}, "t1", cache=False))[0] != first
    clock.advance(60 - refresh_margin(60) - 1)
    assert (await mint(agent(), pay, ["pay"], {"account": "a"}, "t1"))[0] == first
    clock.advance(2)  # now within the refresh margin: a fresh token
    assert (await mint(agent(), pay, ["pay"], {"account": "a"}, "t1"))[0] != first


async def test_a_key_withdrawn_on_reload_no_longer_serves_cached_tokens(service: CredentialService,
                                                                        clock: Clock) -> None:
    # A key removed from key_dir (perhaps compromised) must stop reaching upstreams at once, not after ttl_s.
    pay = upstream(service, "payments")
    first, _ = await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")
    old = service.keys.current
    replacement = ed25519.Ed25519PrivateKey.generate()
    path = service.keys.key_dir / "operator.pem"
    path.write_bytes(replacement.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.utime(path, (old.created + 5, old.created + 5))
    old.path.unlink()
    assert await service.reload_keys() is True and service.keys.algorithm_of(old.kid) is None
    token, _ = await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")
    assert token != first and jwt.get_unverified_header(token)["kid"] == thumbprint(replacement)
    assert (await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1"))[0] == token  # cached again


async def test_scheduled_rotation_renews_cached_tokens(service: CredentialService) -> None:
    pay = upstream(service, "payments")
    first, _ = await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")
    kid = service.rotate_keys()
    token, _ = await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")
    assert token != first and jwt.get_unverified_header(token)["kid"] == kid


async def test_ended_task_drops_cache_and_refuses(service: CredentialService) -> None:
    pay = upstream(service, "payments")
    _, claims = await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")
    assert await service.end_task("t1") == [claims["jti"]]
    with pytest.raises(GatewayError):
        await service.minter.mint(agent(), pay, ["pay"], {"account": "a"}, "t1")


async def test_revocation_store_down_means_no_token(tmp_path, clock: Clock, redis_server) -> None:
    from gateway.store import RedisConnection

    config = make_config(tmp_path, UPSTREAMS, store={"redis": {"url": redis_server.url}})
    conn = RedisConnection(config.store.redis)  # type: ignore[union-attr]
    svc = CredentialService(config, redis=conn, clock=clock)
    await svc.start()
    try:
        await svc.minter.mint(agent(), upstream(svc, "payments"), ["pay"], {}, "t1")
        redis_server.kill()
        with pytest.raises(GatewayError) as err:
            await svc.minter.mint(agent(), upstream(svc, "payments"), ["pay"], {}, "t2")
        assert err.value.reason == "credential_unavailable"
        await svc.exchanger.close()
    finally:
        await conn.close()


async def test_es256_signing(tmp_path, clock: Clock) -> None:
    svc = CredentialService(make_config(tmp_path, UPSTREAMS, signing={"key_dir": str(tmp_path / "k"),
                                                                     "algorithm": "ES256"}), clock=clock)
    await svc.start()
    token, _ = await svc.minter.mint(agent(), upstream(svc, "payments"), ["pay"], {}, "t")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert decode(svc, token, "http://127.0.0.1:9002/mcp")["sub"] == "spiffe://acme/agent-1"
    await svc.close()


async def test_item_names_in_scope_never_read_as_narrowed_arguments(service: CredentialService) -> None:
    """A resource URI was put in `scope` as it is, so `inventory://skus` read as the narrowed argument
    `inventory` with the value `//skus` under the documented format; names are now percent-encoded like the
    values (tool names, made of unreserved characters, are unchanged)."""
    pay = upstream(service, "payments")
    _, claims = await service.minter.mint(agent(), pay, ["inventory://skus?a=b c"], None, "t-res")
    assert claims["scope"] == "inventory%3A%2F%2Fskus%3Fa%3Db%20c account=null"  # payments narrows `account`
    _, claims = await service.minter.mint(agent(), pay, ["get_stock-v2.1"], {"account": "a:b"}, "t-tool")
    assert claims["scope"] == "get_stock-v2.1 account:a%3Ab"


async def test_a_token_narrowed_past_what_a_header_carries_is_refused(service: CredentialService, caplog) -> None:
    """A long narrowed value (a query, a document) made a token of hundreds of KiB: it was sent, and the upstream's
    HTTP server refused the header (uvicorn: a bare 400), so the agent read `upstream_error`. A token past 16 KiB,
    the most the gateway takes from agents itself, is now refused as the credential it is, before it is recorded."""
    payments = upstream(service, "payments")
    token, _ = await service.minter.mint(agent(), payments, ["pay"], {"account": "a" * 4000}, "task-1")
    assert len(token) < 16384
    with pytest.raises(GatewayError) as err:
        await service.minter.mint(agent(), payments, ["pay"], {"account": "é" * 3000}, "task-1")
    assert err.value.reason == "credential_unavailable"
    assert "narrow_to_args" in err.value.message and "16384" in err.value.message
    assert "payments" in caplog.text and "é" not in caplog.text
    # Only the first was recorded under the task (the refused one would have been a record of nothing sent).
    first = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert await service.revocations.revoke_task("task-1") == [first]
