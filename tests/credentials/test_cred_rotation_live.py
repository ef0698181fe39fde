"""Key rotation on a running gateway with calls in flight: on SIGHUP (a key dropped into key_dir) and on schedule.

A real SDK upstream verifies every minted token against the gateway's JWKS (refetched on an unknown kid) and
introspection. While agents keep calling, the signer changes; no call may fail, the JWKS must serve both keys,
new tokens must carry the new kid, tokens minted before the rotation must still verify against the JWKS, and
once the retention window (longest ttl_s + signing.retire_grace_s) has passed the old key must be gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.credentials.keys import thumbprint
from tests.credentials.upstream import JwksVerifier, bound_socket, guarded_payments, serve_upstream
from tests.support.mcp_client import sdk_client

# Agents switch to the new key at their next call (a rotated key's cached token is not reused), so ttl_s only sets
# how long the old key stays published (ttl_s + grace) and how much life a reused token has left on its way to the
# upstream and its introspection (refresh_margin: about 2 s at 10 s, 1 s at 2 s). Both are windows a loaded CI
# machine must not outrun: with 2 s tokens, a stall of a second could expire a token in flight, and one of 2.5 s
# could take the old key out of the JWKS before the test looked. The scheduled period is every agent's time to
# switch before the next rotation (a third key would never let them all end on the second).
TTL_S = 10
GRACE_S = 0.5
ROTATE_EVERY_S = 8


def payments(upstream_url: str, policies: Path, key_dir: Path, **signing: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "payments", "url": upstream_url,
                           "credentials": {"mode": "minted", "ttl_s": TTL_S, "narrow_to_args": ["account"]}}],
            "policies": {"dir": str(policies)},
            "signing": {"key_dir": str(key_dir), "retire_grace_s": GRACE_S, **signing}}


def write_key(path: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return thumbprint(key)


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def jwks(url: str) -> dict[str, jwt.PyJWK]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/.well-known/jwks.json") as resp:
        return {k["kid"]: jwt.PyJWK(k) for k in (await resp.json())["keys"]}


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        await asyncio.sleep(0.05)  # polling for an observable state, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


class Agents:
    """A few agents, each in its own MCP session, calling `pay` back to back until stopped."""

    def __init__(self, mcp: str, count: int = 4) -> None:
        self.mcp = mcp
        self.results: list[str] = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self._agent(i)) for i in range(count)]

    async def _agent(self, index: int) -> None:
        async with sdk_client(self.mcp) as client:
            while not self.stop.is_set():
                result = await client.call_tool("payments__pay", {"account": f"acct-{index}", "amount": 1})
                text = "".join(getattr(c, "text", "") for c in result.content)
                self.results.append(("ERROR: " if result.is_error else "") + text)

    async def finish(self) -> list[str]:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        return self.results


def call_kids(verifier: JwksVerifier) -> dict[str, list[str]]:
    """The kid of every `pay` call's token, per task (one per agent session), in the order the upstream saw them."""
    kids: dict[str, list[str]] = {}
    for token, claims in zip(verifier.tokens, verifier.accepted, strict=True):
        if claims["scope"].startswith("pay "):
            kids.setdefault(claims["task"], []).append(kid_of(token))
    return kids


async def rotate_under_load(url: str, verifier: JwksVerifier, old_kid: str, rotate: Callable[[], None]) -> str:
    """Rotate while agents call; check the proof; return the new kid."""
    agents = Agents(f"{url}/mcp")
    try:
        await until(lambda: len(agents.results) >= 8, "calls signed by the first key")
        before = len(verifier.tokens)
        rotate()
        await until(lambda: any(kid_of(t) != old_kid for t in verifier.tokens[before:]), "a token with a new kid")
        published = await jwks(url)
        new_kid = next(kid_of(t) for t in verifier.tokens[before:] if kid_of(t) != old_kid)
        # A token signed by a rotated key is not reused: every agent's next call carries a new-kid token.
        await until(lambda: len(call_kids(verifier)) == 4
                    and all(kids[-1] == new_kid for kids in call_kids(verifier).values()),
                    "every agent to call with a token signed by the new key")
    finally:
        results = await agents.finish()
    assert results and all(r.startswith("paid 1 to acct-") for r in results), results
    assert verifier.rejections == []
    assert list(published) == [new_kid, old_kid]  # both served, the newest (the signer) first
    # Every token minted before the rotation still verifies against the JWKS as served after it.
    old_tokens = [t for t in verifier.tokens if kid_of(t) == old_kid]
    assert old_tokens
    for token in old_tokens:
        jwt.decode(token, published[old_kid], algorithms=["EdDSA"], audience=verifier.audience,
                   options={"verify_exp": False})
    # Per agent (task), tokens switch from the old kid to the new one once and never go back.
    for kids in call_kids(verifier).values():
        assert kids == sorted(kids, key=lambda kid: kid == new_kid) and kids[-1] == new_kid, kids
    return new_kid


async def test_sighup_makes_a_key_dropped_into_key_dir_the_signer(spawn_gateway, permissive_policies,
                                                                   tmp_path: Path) -> None:
    up_sock = bound_socket()
    upstream_url = f"http://127.0.0.1:{up_sock.getsockname()[1]}/mcp"
    # The gateway's port is its own choice (a port chosen here may be taken before a slow start-up binds it).
    verifier = JwksVerifier(issuer="http://gateway.pending", audience=upstream_url, introspect=True)
    key_dir = tmp_path / "keys"
    first = write_key(key_dir / "first.pem")
    os.utime(key_dir / "first.pem", (1_700_000_000, 1_700_000_000))
    async with serve_upstream(guarded_payments(verifier), up_sock):
        # production: the key must come from the operator (nothing is generated).
        gw = await spawn_gateway({**payments(upstream_url, permissive_policies, key_dir),
                                  "environment": "production"})
        verifier.issuer = gw.url
        second: list[str] = []

        def drop_and_hup() -> None:
            second.append(write_key(key_dir / "second.pem"))
            gw.proc.send_signal(signal.SIGHUP)

        new_kid = await rotate_under_load(gw.url, verifier, first, drop_and_hup)
        assert new_kid == second[0]
        await until(lambda: "now signs" in gw.log(), "the reload log line")
        # After the longest ttl_s + grace, the old key leaves the JWKS (its operator file stays on disk).
        await until(lambda: _published_only(gw.url, new_kid), "the retired key to leave the JWKS")
        assert (key_dir / "first.pem").exists()
        assert sorted(p.name for p in key_dir.glob("*.pem")) == ["first.pem", "second.pem"]


async def test_scheduled_rotation_with_calls_in_flight(start_gateway, permissive_policies, tmp_path: Path) -> None:
    up_sock = bound_socket()
    upstream_url = f"http://127.0.0.1:{up_sock.getsockname()[1]}/mcp"
    verifier = JwksVerifier(issuer="http://gateway.pending", audience=upstream_url, introspect=True)
    key_dir = tmp_path / "keys"
    async with serve_upstream(guarded_payments(verifier), up_sock):
        gw = await start_gateway(payments(upstream_url, permissive_policies, key_dir,
                                          rotate_every_s=ROTATE_EVERY_S))
        verifier.issuer = gw.url
        (old_kid,) = await jwks(gw.url)
        new_kid = await rotate_under_load(gw.url, verifier, old_kid, lambda: None)  # the schedule rotates
        generated = sorted(p.name for p in key_dir.glob("k*.pem"))
        assert any(new_kid in name for name in generated)
        await until(lambda: _old_gone(gw.url, old_kid), "the first key to leave the JWKS")
        assert not any(old_kid in p.name for p in key_dir.glob("*.pem"))  # generated files are deleted


async def _published_only(url: str, kid: str) -> bool:
    return list(await jwks(url)) == [kid]


async def _old_gone(url: str, kid: str) -> bool:
    return kid not in await jwks(url)
