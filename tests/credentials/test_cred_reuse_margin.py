"""A cached credential is reused only while it has its refresh margin left by the `exp` it carries.

`exp` is whole seconds (RFC 7519 NumericDate as an integer), so a token minted at 100.9 with ttl_s 2 says
`exp: 102`; its reuse window was reckoned from 102.9, so it was handed out with as little as 0.1 s left
and expired on its way to the upstream (401 under load in the live rotation test).
"""

from __future__ import annotations

import jwt

from gateway.credentials import CredentialService
from tests.credentials.helpers import Clock, agent, make_config


def _exp(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_a_cached_token_is_not_reused_within_its_margin_of_the_exp_it_carries(tmp_path, clock: Clock) -> None:
    upstreams = [{"name": "payments", "url": "http://127.0.0.1:9002/mcp",
                  "credentials": {"mode": "minted", "ttl_s": 2}}]
    svc = CredentialService(make_config(tmp_path, upstreams), clock=clock)
    await svc.start()
    try:
        pay = svc.stage.upstreams["payments"]
        clock.now = 1_800_000_000.9
        first, _ = await svc.minter.mint(agent(), pay, ["pay"], {}, "task-1")
        assert _exp(first) == 1_800_000_002  # whole seconds: 1.1 s of life, not 2
        clock.now = 1_800_000_000.95
        again, _ = await svc.minter.mint(agent(), pay, ["pay"], {}, "task-1")
        assert again == first  # still reused while more than the margin (1 s) is left
        clock.now = 1_800_000_001.5  # 0.5 s left by its exp
        fresh, _ = await svc.minter.mint(agent(), pay, ["pay"], {}, "task-1")
        assert fresh != first and _exp(fresh) - clock.now >= 1.0
    finally:
        await svc.close()
