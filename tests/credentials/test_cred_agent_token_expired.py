"""An agent token past its `exp` but still inside `identity.clock_skew_s` is accepted, yet no credential can
outlive it: the refusal says the agent's token has expired (a refreshed token fixes it), never that the task
ended, for minted tokens and for the actor token of a token exchange alike."""

from __future__ import annotations

import time

import pytest
from mcp.shared.exceptions import MCPError

from gateway.credentials import CredentialService
from gateway.errors import GatewayError
from tests.credentials.helpers import Clock, agent, make_config, payments_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer


def expected_data() -> dict[str, object]:
    return {"agent_token_expired": True}


async def test_expired_agent_token_within_skew_is_not_a_task_end(start_gateway, permissive_policies,
                                                                  tmp_path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as upstream_url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "identity": {"mode": "jwt", "clock_skew_s": 120, "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        expired = issuer.mint("agent-1", aud=gw.mcp, tenant="acme", exp=time.time() - 30)
        fresh = issuer.mint("agent-1", aud=gw.mcp, tenant="acme")
        async with sdk_client(gw.mcp, expired) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("payments__pay", {"account": "acme-1", "amount": 3})
        data = refused.value.error.data
        assert isinstance(data, dict) and data["reason"] == "credential_unavailable", data
        assert "task_ended" not in data and data["agent_token_expired"] is True, data
        message = refused.value.error.message
        assert "expired" in message and "refreshed token" in message, message
        async with sdk_client(gw.mcp, fresh) as client:  # a refreshed token fixes it
            result = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 3})
            assert not result.is_error, result


async def test_minter_and_actor_token_name_the_expired_agent_token(tmp_path, clock: Clock) -> None:
    svc = CredentialService(make_config(tmp_path, [{"name": "payments", "url": "http://127.0.0.1:9002/mcp",
                                                    "credentials": {"mode": "minted"}}]), clock=clock)
    await svc.start()
    try:
        who = agent(expires_at=clock() - 5)
        with pytest.raises(GatewayError) as err:
            await svc.minter.mint(who, svc.stage.upstreams["payments"], ["pay"], {}, "t",
                                  task_end=svc.tasks.known_end("t", who))
        assert err.value.reason == "credential_unavailable" and err.value.data == expected_data()
        with pytest.raises(GatewayError) as err:
            await svc.minter.mint_actor("http://as.example/token", "t", 60, svc.tasks.known_end("t", who),
                                        agent_expires_at=who.expires_at)
        assert err.value.reason == "credential_unavailable" and err.value.data == expected_data()
        # A task that really ended still says so.
        with pytest.raises(GatewayError) as err:
            await svc.minter.mint(agent(), svc.stage.upstreams["payments"], ["pay"], {}, "t2", task_end=clock() - 1)
        assert err.value.data == {"task_ended": True}
    finally:
        await svc.close()
