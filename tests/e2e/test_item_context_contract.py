"""The context of `list_tools`, `get_prompt` and `read_resource` (docs/policies.md, "Context of the agent actions":
the same attributes as `call_tool`), each compared with its exact value by a policy, through a real gateway and raw
JSON-RPC. test_call_context_contract.py pins `call_tool`'s; nothing pinned these three, whose decisions hide items
from lists and answer denied prompts and resources like missing ones. Each actor of the token's `act` chain is an
`Agent` in its `Tenant` too: one the `agents:` registry names counts, one with no known attributes fails closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import inventory_server
from tests.support.contract import Agent, any_of, hours_and_weekdays, reason, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

PRINCIPAL = "spiffe://acme.test/agent/shopper"
PLANNER = "spiffe://acme.test/agent/planner"  # in the agents: registry, tenant acme
GHOST = "spiffe://acme.test/agent/ghost"  # in no registry: attributes only from its own act object
SKUS = "customs://inventory/inventory://skus"


def _policies() -> str:
    hours, weekdays = hours_and_weekdays()
    facts = f"""
  context.environment == "staging" && context.tenant == "acme" && context.approval == "none" &&
  context.chain_depth == 1 && context.chain.containsAny(["{PLANNER}", "{GHOST}"]) &&
  !context.chain.contains("{PRINCIPAL}") && !context.args_contain_secret && !context.args_truncated &&
  {any_of("context.time.hour", hours)} && {any_of("context.time.weekday", weekdays)} &&
  principal in Tenant::"acme" && resource in Server::"inventory"
"""
    return f"""
@id("list-delegated")
permit (principal, action == Action::"list_tools", resource == Tool::"inventory/get_stock")
when {{ {facts} && !(context.args has sku) }};

@id("prompt-delegated")
permit (principal, action == Action::"get_prompt", resource == Tool::"inventory/restock")
when {{ {facts} && context.args has sku && context.args.sku == "widget" }};

@id("resource-delegated")
permit (principal, action == Action::"read_resource", resource == Tool::"inventory/inventory://skus")
when {{ {facts} && !(context.args has sku) }};
"""


async def _answers(agent: Agent) -> dict[str, Any]:
    """What each of the three actions gives this agent: listed tool names, and the reason (or "ok") of a prompt
    fetched with the permitted argument, with another, and of the resource read."""
    out: dict[str, Any] = {}
    status, body, _ = await agent.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 200 and "result" in body, body
    out["listed"] = sorted(tool["name"] for tool in body["result"]["tools"])
    for label, sku in (("prompt", "widget"), ("prompt_other_args", "gadget")):
        status, body, _ = await agent.send({"jsonrpc": "2.0", "id": 2, "method": "prompts/get",
                                            "params": {"name": "inventory__restock", "arguments": {"sku": sku}}})
        assert status == 200, body
        out[label] = "ok" if "result" in body else reason(body)
    status, body, _ = await agent.send({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                                        "params": {"uri": SKUS}})
    assert status == 200, body
    out["resource"] = "ok" if "result" in body else reason(body)
    return out


async def test_list_prompt_and_resource_decisions_see_the_documented_context(start_gateway: Any,
                                                                           tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(inventory_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}], "environment": "staging",
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "agents": {PLANNER: {"tenant": "acme"}},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", _policies()))}})

        async def answers(**claims: Any) -> dict[str, Any]:
            token = issuer.mint(PRINCIPAL, aud=gw.mcp, **claims)
            return await _answers(await Agent(http, gw.mcp, token).open())

        allowed = {"listed": ["inventory__get_stock"], "prompt": "ok", "prompt_other_args": "unknown_prompt",
                   "resource": "ok"}
        hidden = {"listed": [], "prompt": "unknown_prompt", "prompt_other_args": "unknown_prompt",
                  "resource": "unknown_resource"}
        # The planner's tenant comes from the registry: it is an Agent in Tenant::"acme".
        assert await answers(tenant="acme", act=act_chain(PLANNER)) == allowed
        # An actor describing itself in its own act object.
        assert await answers(tenant="acme", act=act_chain((GHOST, {"tenant": "acme"}))) == allowed
        # The same actor with no known attributes: no Tenant parent, so the tenant-scoped permits fail closed.
        assert await answers(tenant="acme", act=act_chain(GHOST)) == hidden
        assert await answers(tenant="acme") == hidden  # chain_depth 0, chain empty
        assert await answers(tenant="globex", act=act_chain(PLANNER)) == hidden  # context.tenant
        assert await answers(tenant="acme", act=act_chain(PLANNER, (GHOST, {"tenant": "acme"}))) == hidden  # depth 2
