"""The pinned context of `call_tool` (../shared/interfaces.md, Cedar contract: `args`, `environment`, `tenant`,
`chain`, `chain_depth`, `approval`, `time {hour, weekday}`, `args_contain_secret`), each compared with its exact
value by a policy, through a real gateway (docs/policies.md, Context). The contract test reads most of them only as
`>= 0` or against themselves; these pin what each holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import payments_server
from tests.support.contract import Agent, any_of, hours_and_weekdays, reason, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

PRINCIPAL = "spiffe://acme.test/agent/shopper"
PLANNER, ROUTER = "spiffe://acme.test/agent/planner", "spiffe://acme.test/agent/router"


def _policies() -> str:
    hours, weekdays = hours_and_weekdays()
    return f"""
@id("delegated-balance")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/balance")
when {{
  context.environment == "staging" && context.tenant == "acme" && context.approval == "none" &&
  context.chain_depth == 2 && context.chain.contains("{PLANNER}") && context.chain.contains("{ROUTER}") &&
  !context.chain.contains("{PRINCIPAL}") && context.args has account && context.args.account == "acme-1" &&
  {any_of("context.time.hour", hours)} && {any_of("context.time.weekday", weekdays)}
}};

@id("tenantless-direct")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/executed_calls")
when {{ context.tenant == "" && context.chain_depth == 0 && context.environment == "staging" }};

@id("no-secrets")
forbid (principal, action == Action::"call_tool", resource)
when {{ context.args_contain_secret }};
"""


async def test_each_context_fact_holds_its_documented_value(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": url}], "environment": "staging",
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", _policies()))}})

        async def call(tool: str, args: dict[str, Any], **claims: Any) -> str | None:
            token = issuer.mint(PRINCIPAL, aud=gw.mcp, **claims)
            status, body, _ = await (await Agent(http, gw.mcp, token).open()).call(f"payments__{tool}", args)
            assert status == 200, body
            return "ok" if "result" in body else reason(body)

        chain = act_chain(PLANNER, ROUTER)
        assert await call("balance", {"account": "acme-1"}, tenant="acme", act=chain) == "ok"
        assert await call("balance", {"account": "acme-2"}, tenant="acme", act=chain) == "unknown_tool"  # args
        assert await call("balance", {"account": "acme-1"}, tenant="other", act=chain) == "unknown_tool"  # tenant
        assert await call("balance", {"account": "acme-1"}, tenant="acme", act=act_chain(PLANNER)) == "unknown_tool"
        assert await call("balance", {"account": "acme-1"}, tenant="acme") == "unknown_tool"  # chain_depth 0
        # A secret among the arguments (a key named for one): context.args_contain_secret, so the forbid fires.
        assert await call("balance", {"account": "acme-1", "password": "hunter2"}, tenant="acme",
                          act=chain) == "unknown_tool"
        assert await call("executed_calls", {}) == "ok"  # no tenant claim: context.tenant is ""
        assert await call("executed_calls", {}, tenant="acme") == "unknown_tool"
