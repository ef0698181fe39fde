"""The approver as Cedar sees it (../shared/interfaces.md, Cedar contract): `User::"<sub>"`, in `Group::"<group>"` for
each group claim, deciding `Action::"approve"` on the held call, through a real gateway. The contract test names
approvers by group only; here one is named by `sub` and one by a group of several."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import payments_server
from tests.support.contract import CONTRACT_POLICIES, SHOPPER, Agent, Api, reason, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

APPROVE = """
@id("carol-decides")
permit (principal == User::"carol", action == Action::"approve", resource);

@id("auditors-decide-small")
permit (principal in Group::"auditors", action == Action::"approve", resource)
when { resource.args has amount && resource.args.amount < 100 };
"""
# The contract set permits every action but approve here, so that only the policies above decide approvals.
AGENT_POLICIES = CONTRACT_POLICIES.replace("permit (principal, action, resource) unless",
                                           'permit (principal, action, resource) unless { action == Action::"approve" }'
                                           " unless")


async def test_approvers_are_users_by_sub_in_a_group_per_group_claim(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", AGENT_POLICIES + APPROVE))}})
        api = Api(http, gw.url, issuer)
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()

        async def hold(amount: int) -> str:
            _, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": amount})
            assert reason(held) == "approval_pending", held
            return str(held["error"]["data"]["approval_id"])

        big, small = await hold(500), await hold(50)
        carol, dave = api.person("carol"), api.person("dave")  # no groups: only carol is named by a policy
        eve = api.person("eve", "staff", "auditors")  # the second of her groups lets her decide small ones
        for token, visible in ((carol, {big, small}), (dave, set()), (eve, {small})):
            status, listed = await api.request("GET", "/api/approvals?state=pending", token)
            assert status == 200 and {item["id"] for item in listed["items"]} == visible, listed
        for token, approval_id in ((dave, small), (eve, big)):
            status, body = await api.request("POST", f"/api/approvals/{approval_id}/approve", token, {})
            assert (status, body["error"]["reason"]) == (403, "forbidden"), body
        status, decided = await api.request("POST", f"/api/approvals/{small}/approve", eve, {})
        assert status == 200 and decided["decided_by"] == "eve", decided
        status, decided = await api.request("POST", f"/api/approvals/{big}/deny", carol, {"comment": "too much"})
        assert status == 200 and (decided["state"], decided["decided_by"]) == ("denied", "carol"), decided
