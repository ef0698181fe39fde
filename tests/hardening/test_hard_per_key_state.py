"""Per-key state in a running gateway stays bounded: keys an agent can mint (principals, sessions, tasks)
must not leave entries behind for the life of the process.

With `store: memory` the rate-limit buckets and the task facts lived in dicts that nothing ever pruned: a
gateway seeing many distinct principals (SPIFFE ids, tokens of many subjects) or many sessions grew them
forever. Buckets are now swept once refilled (the app's lifecycle runs the sweep), and a task's facts go
when the task ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ACCEPT, RawClient, Recorder, one_shape_policies, poll
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
WIDGET = {"sku": "widget"}
PRINCIPALS = 20  # enough distinct keys to show none is kept; the count is not the point


def jwt_config(url: str, tmp_path: Path, issuer: TestIssuer, limits: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": [{"name": "rec", "url": url}], "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False}, "limits": limits}


async def test_buckets_of_principals_gone_quiet_are_swept_while_the_gateway_runs(
        start_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Each distinct principal left a bucket for the process' life. A refilled bucket (here 1 s after its one
    call) is dropped by the sweep the app's lifecycle runs (every 1 s for this rule, the floor), so they all go."""
    _, url = upstream
    issuer = TestIssuer(tmp_path)
    gw = await start_gateway(jwt_config(url, tmp_path, issuer, {"per_principal": {"rate_per_s": 1, "burst": 1}}))
    for n in range(PRINCIPALS):
        bearer = issuer.mint(f"spiffe://acme/agent-{n}", aud=gw.mcp, tenant="acme")
        client = RawClient(http, gw.mcp, {"Authorization": f"Bearer {bearer}"})
        await client.initialize()
        status, _, body = await client.call("rec__lookup", WIDGET)
        assert status == 200 and "result" in body, body
    buckets = gw.gateway.parts.limiter._backend.buckets
    assert f"p:{issuer.issuer}|spiffe://acme/agent-{PRINCIPALS - 1}" in buckets  # still refilling
    await poll(lambda: not buckets, timeout=20, what="the sweep to drop the refilled buckets")


async def test_task_facts_go_when_their_session_ends(
        start_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Every call reserves facts under its task (a session's own task here), denied calls too. The facts of
    an ended task were kept forever, one entry per session ever opened; they now go with the task."""
    _, url = upstream
    issuer = TestIssuer(tmp_path)
    gw = await start_gateway(jwt_config(url, tmp_path, issuer, {}))
    facts = gw.gateway.parts.facts._store.tasks
    bearer = issuer.mint("agent-looping", aud=gw.mcp, tenant="acme")
    for n in range(PRINCIPALS):
        client = RawClient(http, gw.mcp, {"Authorization": f"Bearer {bearer}"})
        session_id = await client.initialize()
        allowed = n % 2 == 0
        status, _, body = await client.call("rec__lookup", WIDGET if allowed else {"sku": "other"})
        assert status == 200 and ("result" in body) == allowed, body
        assert len(facts) == 1  # this session's task
        async with http.delete(gw.mcp, headers={**ACCEPT, "Authorization": f"Bearer {bearer}",
                                                "Mcp-Session-Id": session_id}) as resp:
            assert resp.status in (200, 202, 204), await resp.text()
        assert facts == {}
