"""Two JWT issuers, one subject: `principal.issuer` tells a real gateway's policies which IdP vouched for the agent,
for the principal and (the outer token's issuer) for every actor of its chain; replay decides its log alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.servers import inventory_server
from tests.support.cli import customs_main
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
ONE, TWO = "https://idp-one.test", "https://idp-two.test"
POLICIES = f'''
@id("bot-vouched-by-idp-one")
permit (principal == Agent::"bot", action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when {{ principal.issuer == "{ONE}" }};

@id("planner-from-anywhere")
permit (principal == Agent::"planner", action == Action::"call_tool", resource == Tool::"inventory/get_stock");
'''


async def allowed(gw: Any, token: str) -> bool:
    async with sdk_client(gw.mcp, token) as client:
        try:
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
        except Exception as exc:  # a denial answers exactly like a missing tool
            assert "Unknown tool: inventory__get_stock" in str(exc)
            return False
        assert result.content[0].text == "widget: 42 in stock"  # type: ignore[union-attr]
        return True


def replay(log: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    """`customs policy replay` run by its main() in this process (it sends no request; test_authz_cli.py runs it as a
    child process)."""
    return customs_main("policy", "replay", "--log", str(log), "--policies", str(policies))


async def test_a_policy_tells_the_issuers_of_one_subject_apart(start_gateway: Any, tmp_path: Path) -> None:
    one = TestIssuer(tmp_path, issuer=ONE, name="one", algorithms=("ES256",))
    two = TestIssuer(tmp_path, issuer=TWO, name="two", algorithms=("ES256",))
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(REPO / "policies" / "schema.cedarschema", policies)  # the shipped schema declares issuer
    (policies / "issuers.cedar").write_text(POLICIES)
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(inventory_server()) as inv:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inv}],
            "identity": {"mode": "jwt", "issuers": [one.config(), two.config()]},
            "policies": {"dir": str(policies), "watch": False},
            "decision_log": {"path": str(log)},
        })

        def bot(issuer: TestIssuer, **kw: Any) -> str:
            return issuer.mint("bot", aud=gw.mcp, alg="ES256", **kw)

        # The same sub, the same tool, the same arguments: only the issuer differs, so the second decision must
        # not be the first one remembered (decisions are cached by their entities' JSON).
        assert await allowed(gw, bot(one))
        assert not await allowed(gw, bot(two))
        assert await allowed(gw, bot(one))
        # Actors carry the issuer of the token that names them: the outer token vouches for the whole chain.
        def planner(issuer: TestIssuer) -> str:
            return issuer.mint("planner", aud=gw.mcp, alg="ES256", act=act_chain("bot"))

        assert await allowed(gw, planner(one))
        assert not await allowed(gw, planner(two))
        await gw.runner.cleanup()  # the decision log is drained and closed

    records = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [r for r in records if r.get("type") == "decision" and r.get("method") == "tools/call"]
    assert [(r["issuer"], r["decision"]) for r in calls] == [(ONE, "allow"), (TWO, "deny"), (ONE, "allow"),
                                                             (ONE, "allow"), (TWO, "deny")]
    # Replay takes each record's issuer: the policies that decided the log decide it alike ...
    same = replay(log, policies)
    assert same.returncode == 0 and "5 replayed, 0 changed" in same.stdout, same.stdout + same.stderr
    # ... and trusting the other IdP instead flips exactly the calls each one vouched for.
    (policies / "issuers.cedar").write_text(POLICIES.replace(ONE, TWO))
    flipped = replay(log, policies)
    assert flipped.returncode == 1 and "5 replayed, 5 changed" in flipped.stdout, flipped.stdout + flipped.stderr
    assert "bot-vouched-by-idp-one: 5 changed" in flipped.stdout
