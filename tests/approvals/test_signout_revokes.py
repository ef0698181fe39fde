"""Sign-out ends the approver's session for good: the cookie it cleared, replayed, is refused (real gateways).

The session cookie holds the approver's own token, which verifies on any replica until its `exp`: clearing the
cookie in the browser left a copy of it (a proxy log, another machine's jar) as good as before the sign-out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.approvals.conftest import Clock

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "http://customs.test"


def _config(issuer: Any, store: Any = "memory") -> dict[str, Any]:
    return {"listen": {"public_url": PUBLIC}, "upstreams": [{"name": "x", "url": "http://127.0.0.1:9/mcp"}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=f"{PUBLIC}/mcp")]},
            "policies": {"dir": str(REPO / "policies"), "watch": False}, "store": store}


@dataclass
class Session:
    url: str
    token: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        """The cookies as the browser held them before the sign-out (a copy someone kept)."""
        return {"Cookie": f"customs_csrf={self.csrf}; customs_approver={self.token}"}


async def _gateway_and_alice(start_gateway: Any, tmp_path: Path) -> tuple[Any, Any, str]:
    """A gateway of `_config`, its issuer and a token of alice, an approver, from it."""
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path)
    return await start_gateway(_config(issuer)), issuer, issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers"])


async def _two_replicas(start_gateway: Any, tmp_path: Path, redis_factory: Any) -> tuple[Any, Any, tuple[Any, Any]]:
    """An issuer, a Redis server and two replicas of `_config` sharing it."""
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path)
    server = redis_factory()
    config = _config(issuer, {"redis": {"url": server.url}})
    return issuer, server, (await start_gateway(config), await start_gateway(config))


async def _sign_in(http: aiohttp.ClientSession, url: str, token: str) -> Session:
    async with http.get(f"{url}/approvals") as resp:
        csrf = resp.cookies["customs_csrf"].value
    async with http.post(f"{url}/approvals/signin", data={"token": token, "csrf": csrf},
                         headers={"Cookie": f"customs_csrf={csrf}"}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        return Session(url, token, resp.cookies["customs_csrf"].value)


async def _sign_out(http: aiohttp.ClientSession, session: Session) -> None:
    async with http.post(f"{session.url}/approvals/signout", data={"csrf": session.csrf}, headers=session.cookie,
                         allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.cookies["customs_approver"].value == ""  # the browser's copy is cleared, as before


async def _refused(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with http.get(f"{url}/api/approvals", headers=headers) as resp:
        assert resp.status == 401, await resp.text()
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        error: dict[str, Any] = (await resp.json())["error"]
        return error


async def test_a_signed_out_cookie_replayed_is_refused(start_gateway: Any, tmp_path: Path) -> None:
    gw, issuer, token = await _gateway_and_alice(start_gateway, tmp_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        session = await _sign_in(http, gw.url, token)
        async with http.get(f"{gw.url}/api/approvals", headers=session.cookie) as resp:
            assert resp.status == 200  # the session works before the sign-out
        await _sign_out(http, session)
        error = await _refused(http, gw.url, session.cookie)
        assert error["reason"] == "unauthenticated" and "signed out" in error["message"]
        async with http.get(f"{gw.url}/approvals", headers=session.cookie) as resp:
            assert resp.status == 200 and 'id="signin"' in await resp.text()  # the page: the sign-in form
        # The cookie's value is the token itself: as a bearer token, or signed in with again, it is refused too.
        await _refused(http, gw.url, {"Authorization": f"Bearer {token}"})
        async with http.post(f"{gw.url}/approvals/signin", data={"token": token, "csrf": session.csrf},
                             headers={"Cookie": f"customs_csrf={session.csrf}"}, allow_redirects=False) as resp:
            assert resp.status == 401 and "signed out" in await resp.text()
        fresh = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers"])  # a new token signs in again
        async with http.get(f"{gw.url}/api/approvals", headers={"Authorization": f"Bearer {fresh}"}) as resp:
            assert resp.status == 200


async def test_a_sign_out_without_a_valid_session_records_nothing(start_gateway: Any, tmp_path: Path) -> None:
    # Sign-out needs no session (it only clears cookies): a garbage cookie must not become a record to keep.
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path)
    gw = await start_gateway(_config(issuer))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        garbage = Session(gw.url, "not-a-token", "c" * 43)
        await _sign_out(http, garbage)
        token = issuer.mint("bob", aud=f"{PUBLIC}/mcp", groups=["approvers"])
        async with http.get(f"{gw.url}/api/approvals", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200


async def test_a_sign_out_on_one_replica_is_refused_on_the_other(start_gateway: Any, tmp_path: Path,
                                                                 redis_factory: Any) -> None:
    issuer, server, (a, b) = await _two_replicas(start_gateway, tmp_path, redis_factory)
    exp = time.time() + 600
    token = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers"], exp=exp)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        session = await _sign_in(http, a.url, token)
        async with http.get(f"{b.url}/api/approvals", headers=session.cookie) as resp:
            assert resp.status == 200  # one session, any replica
        await _sign_out(http, session)
        for gw in (a, b):
            assert "signed out" in (await _refused(http, gw.url, session.cookie))["message"]
    from gateway.approvals.signouts import MAX_SKEW_S, token_key

    client = aioredis.from_url(server.url)
    try:
        ttl = await client.ttl(f"customs:approvals:signedout:{token_key(token)}")
    finally:
        await client.aclose()
    # Kept as long as the token could still verify (its exp, plus the most clock skew an issuer may have), no longer.
    assert 600 < ttl <= int(exp - time.time()) + MAX_SKEW_S + 1


async def test_a_sign_out_while_redis_is_down_holds_on_its_replica(start_gateway: Any, tmp_path: Path,
                                                                   redis_factory: Any) -> None:
    issuer, server, (a, b) = await _two_replicas(start_gateway, tmp_path, redis_factory)
    token = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers"])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        session = await _sign_in(http, a.url, token)
        server.kill()
        await _sign_out(http, session)  # the browser is signed out all the same
        assert "signed out" in (await _refused(http, a.url, session.cookie))["message"]
        # Whether another replica heard of a sign-out cannot be known without Redis: it fails closed.
        async with http.get(f"{b.url}/api/approvals", headers=session.cookie) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["reason"] == "approval_unavailable"
        async with http.get(f"{b.url}/approvals", headers=session.cookie) as resp:
            assert resp.status == 503 and "unavailable" in await resp.text()


async def test_the_bearer_streams_of_a_signed_out_token_end_with_it(start_gateway: Any, tmp_path: Path) -> None:
    # The token in the cookie used as a bearer token elsewhere (a second tool): its live stream ends too.
    gw, _, token = await _gateway_and_alice(start_gateway, tmp_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        session = await _sign_in(http, gw.url, token)
        async with http.get(f"{gw.url}/api/approvals/events", headers={"Authorization": f"Bearer {token}"}) as stream:
            assert await asyncio.wait_for(stream.content.readline(), 5) == b": connected\n"
            await _sign_out(http, session)
            await asyncio.wait_for(stream.content.read(), 10)  # ended by the sign-out, not at the token's exp


async def test_memory_sign_outs_are_kept_until_expiry_and_bounded() -> None:
    from gateway.approvals.signouts import MemorySignOuts

    clock = Clock()
    kept = MemorySignOuts(max_kept=3, clock=clock)
    await kept.sign_out("a", clock() + 10)
    await kept.sign_out("b", clock() + 100)
    await kept.sign_out("c", clock() + 50)
    assert [await kept.signed_out(k) for k in "abcd"] == [True, True, True, False]
    clock.advance(20)
    assert not await kept.signed_out("a")  # its token no longer verifies: nothing left to refuse
    await kept.sign_out("d", clock() + 40)
    await kept.sign_out("e", clock() + 500)  # full: the one whose token lapses soonest makes room
    assert [await kept.signed_out(k) for k in "bcde"] == [True, False, True, True]
    assert len(kept) == 3


async def test_a_signed_out_token_respelled_is_refused_too(start_gateway: Any, tmp_path: Path) -> None:
    # The signature segment is the one part of a JWT not signed itself: spelled another way that still decodes to
    # the same signature (here with the base64 padding PyJWT accepts), the token verifies as before. Its sign-out
    # must hold for every spelling, or a kept copy of the cookie gets back in with "==" appended.
    gw, _, token = await _gateway_and_alice(start_gateway, tmp_path)
    padded = token + "=" * (-len(token.rsplit(".", 1)[1]) % 4)
    assert padded != token  # the issuer's signatures are not a multiple of 4 characters long
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{gw.url}/api/approvals", headers={"Authorization": f"Bearer {padded}"}) as resp:
            assert resp.status == 200  # the padded spelling verifies: it is the same token
        session = await _sign_in(http, gw.url, token)
        await _sign_out(http, session)
        for spelling in (token, padded):
            error = await _refused(http, gw.url, {"Authorization": f"Bearer {spelling}"})
            assert "signed out" in error["message"]


async def test_only_a_token_that_may_sign_in_records_a_sign_out(tmp_path: Path) -> None:
    """A sign-out is recorded under the check a sign-in passes (ApproverAuth._verify: verifies, not anonymous, of
    approvals.approvers_issuer when set): an agent's token of another issuer records nothing (it only clears the
    cookies), so agents' tokens cannot fill the bounded record and evict an approver's."""
    from gateway.approvals.auth import ApproverAuth, Refused
    from gateway.approvals.signouts import MemorySignOuts
    from gateway.config.model import IdentityConfig, IssuerConfig
    from gateway.identity.identifier import JwtIdentifier
    from tests.support.tokens import TestIssuer

    people = TestIssuer(tmp_path, issuer="https://people.test", name="people")
    agents = TestIssuer(tmp_path, issuer="https://agents.test", name="agents")
    audience = f"{PUBLIC}/mcp"
    identifier = JwtIdentifier(IdentityConfig(mode="jwt", issuers=tuple(
        IssuerConfig(**i.config(audience=audience)) for i in (people, agents))), {}, PUBLIC, None)
    await identifier.start()
    kept = MemorySignOuts()
    auth = ApproverAuth(identifier, lambda *_: None, approvers_issuer="https://people.test",  # type: ignore[arg-type,return-value]
                        signouts=kept)
    try:
        for n in range(5):
            agent_token = agents.mint(f"bot-{n}", aud=audience)
            assert await auth.sign_out(agent_token) is None
        assert len(kept) == 0
        approver = people.mint("alice", aud=audience, groups=["approvers"])
        assert await auth.sign_out(approver) is not None and len(kept) == 1
        try:
            await auth.identify_token(approver)
        except Refused as exc:
            assert exc.status == 401 and "signed out" in exc.message
        else:
            raise AssertionError("the approver's signed-out token was accepted")
    finally:
        await identifier.close()
