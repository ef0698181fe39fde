"""A task that ends while the revocation store (Redis) cannot be reached still lets go of what this replica holds.

Ending a task revokes its minted tokens in the store and then, on this replica, drops its cached tokens and
revokes its exchanged tokens at the authorization server (RFC 7009). The store's failure skipped the second
half: a session ended (DELETE, expiry) or a gateway stopped during a Redis outage never revoked its exchanged
tokens at the server, which stayed valid until they expired, and their records stayed in memory.
"""

from __future__ import annotations

import pytest
from redis.exceptions import RedisError

from gateway.credentials import CredentialService
from gateway.store import RedisConnection
from tests.credentials.authz_server import TokenEndpoint
from tests.credentials.helpers import Clock, make_config
from tests.credentials.test_cred_exchange_revocation import crm, exchange, revoked_tokens
from tests.support.redis import RedisServer


@pytest.mark.parametrize("how", ["session_end", "shutdown"])
async def test_an_end_during_a_store_outage_still_revokes_at_the_server(
        tmp_path, clock: Clock, endpoint: TokenEndpoint, redis_server: RedisServer, how: str) -> None:
    config = make_config(tmp_path, [crm(endpoint.url, endpoint.revocation_url)],
                         store={"redis": {"url": redis_server.url}})
    conn = RedisConnection(config.store.redis)  # type: ignore[union-attr]
    svc = CredentialService(config, redis=conn, clock=clock)
    svc.exchanger.revoker.retry_delays = (0.01, 0.02)
    await svc.start()
    try:
        assert (await exchange(svc))["Authorization"] == "Bearer exchanged-1"
        redis_server.kill()
        if how == "session_end":
            with pytest.raises(RedisError):  # the store's own error: the session manager logs it
                await svc.session_ended("sess-1")
        else:
            await svc.close()  # logs the store's error per task, as before
        assert await revoked_tokens(endpoint, 1) == ["exchanged-1"]
        assert not svc.exchanger._issued  # nothing of the ended task is kept
    finally:
        await svc.close()
        await conn.close()
