"""`customs policy explain --config` answers what the running gateway answers for the same token.

One config (an issuer mapping `tenant` from the claim `org`, an `agents:` registry, `policies.max_chain_depth: 2`)
serves a real gateway and is handed to the CLI; each token is sent to the gateway and its claims to explain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from gateway.demo.servers import inventory_server
from tests.support.cli import customs, customs_main
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://acme.test/agent/shopper"
PLANNER = "spiffe://acme.test/agent/planner"
STRANGER = "spiffe://acme.test/agent/stranger"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Env:
    def __init__(self, url: str, issuer: TestIssuer, config: Path) -> None:
        self.url, self.issuer, self.config = url, issuer, config

    def token(self, *actors: str) -> str:
        return self.issuer.mint(SHOPPER, aud=f"{self.url}/mcp/inventory", claims={"org": "acme"},
                                act=act_chain(*actors))

    async def online(self, token: str) -> str:
        """What the gateway does with a get_stock call carrying `token`."""
        endpoint = f"{self.url}/mcp/inventory"
        async with aiohttp.ClientSession() as http, http.post(
                endpoint, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"}) as resp:
            if resp.status == 401:
                return "unauthenticated"
        async with sdk_client(endpoint, token) as client:
            try:
                await client.call_tool("get_stock", {"sku": "widget"})
            except Exception as exc:  # the SDK raises the JSON-RPC error: denied reads as an unknown tool
                assert "Unknown tool" in str(exc)
                return "deny"
        return "allow"

    def argv(self, token: str) -> tuple[str, ...]:
        claims = jwt.decode(token, options={"verify_signature": False})
        return ("policy", "explain", "--config", str(self.config), "--principal-claims", json.dumps(claims),
                "--tool", "inventory/get_stock", "--annotations", '{"read_only": true}')


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies, ignore=shutil.ignore_patterns("tests"))
    async with run_http_server(inventory_server()) as inventory:
        data = {
            "upstreams": [{"name": "inventory", "url": inventory}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(claims={"tenant": "org"})]},
            "agents": {PLANNER: {"tenant": "acme", "trust": "low"}},
            "policies": {"dir": str(policies), "watch": False, "max_chain_depth": 2},
        }
        config = tmp_path / "customs.yaml"
        config.write_text(yaml.safe_dump(data))
        gw = await start_gateway(data)
        yield Env(gw.url, issuer, config)


@pytest.mark.parametrize("actors, expected", [
    ((PLANNER,), "allow"),  # tenant from `org`, the planner's from the registry
    ((STRANGER,), "deny"),  # an actor neither the token nor the registry describes fails closed
    ((PLANNER, PLANNER + "2", PLANNER + "3"), "unauthenticated"),  # deeper than max_chain_depth: 401
])
async def test_explain_with_the_config_answers_as_the_gateway(env: Env, actors: tuple[str, ...],
                                                              expected: str) -> None:
    token = env.token(*actors)
    assert await env.online(token) == expected
    result = customs_main(*env.argv(token))
    assert result.returncode == (1 if expected == "unauthenticated" else 0), result.stderr
    assert json.loads(result.stdout)["outcome"] == expected
    # Without the config the same claims are decided otherwise: no tenant (the default mapping reads `tenant`).
    offline = customs_main(*[a for a in env.argv(token) if a not in ("--config", str(env.config))],
                           "--policies", str(REPO / "policies"))
    assert offline.returncode == 0 and json.loads(offline.stdout)["outcome"] == "deny"


async def test_the_console_script_takes_config(env: Env) -> None:
    result = customs(*env.argv(env.token(PLANNER)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "allow"
