"""Rate and concurrency limits against a real gateway process: what a refused call looks like on the wire
and in the `customs.rate_limited` metric."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ANON, RawClient, Recorder, one_shape_policies, reason

pytestmark = pytest.mark.asyncio
WIDGET = {"sku": "widget"}


def limited_config(url: str, tmp_path: Path, limits: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
            "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False}, "limits": limits}


async def rate_limited_counts(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^customs_rate_limited_total\{customs_limit="([^"]*)".*\} (\S+)$', text, re.M)}


async def test_refusals_name_the_rule_on_the_wire_and_in_the_metric(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A burst of N admits exactly N calls; the next is 429 with Retry-After and data.retry_after_s, and is
    never forwarded. Refusals used to carry nothing saying which limit refused them, so the metric's
    `customs.limit` label was always `call`; data.limit now names the rule (per_principal | per_tool), as
    the session caps do, and labels the metric."""
    recorder, url = upstream
    assert recorder.release is not None
    gw = await spawn_gateway(limited_config(url, tmp_path, {
        "per_principal": {"rate_per_s": 0.001, "burst": 3}, "per_tool": {"concurrency": 1}}))
    client = RawClient(http, gw.mcp)
    await client.initialize()

    held = asyncio.create_task(client.call("rec__slow", {}, request_id=1))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    status, headers, body = await client.call("rec__slow", {}, request_id=2)
    assert status == 429 and reason(body) == "rate_limited", body
    assert body["error"]["code"] == -32050
    assert body["error"]["data"]["limit"] == "per_tool"
    assert headers["Retry-After"] == str(body["error"]["data"]["retry_after_s"])
    recorder.release.set()
    assert (await held)[0] == 200

    status, _, body = await client.call("rec__lookup", WIDGET, request_id=3)  # the burst's third token
    assert status == 200 and "result" in body, body
    status, headers, body = await client.call("rec__lookup", WIDGET, request_id=4)
    assert status == 429 and body["error"]["data"]["limit"] == "per_principal", body
    assert body["error"]["data"]["retry_after_s"] >= 1
    assert headers["Retry-After"] == str(body["error"]["data"]["retry_after_s"])
    assert recorder.calls == [("slow", {}), ("lookup", WIDGET)]

    assert await rate_limited_counts(http, gw.url) == {"per_tool": 1.0, "per_principal": 1.0}


@pytest.mark.parametrize("rule", ["per_principal", "per_tool"])
async def test_past_the_budget_a_denied_tool_and_a_missing_one_answer_alike(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path,
        rule: str) -> None:
    """Denied and unknown tools must look the same. The rate limits run before the decision, so a denied tool
    used up its budget and then answered rate_limited, while a made-up name was refused before the limits and
    answered unknown_tool forever: past the budget that told an agent which names exist. A missing name now
    takes from the same buckets a tool of that name would (per principal, and per tool under its own key)."""
    recorder, url = upstream
    gw = await spawn_gateway(limited_config(url, tmp_path, {rule: {"rate_per_s": 0.001, "burst": 2}}))
    client = RawClient(http, gw.mcp)
    await client.initialize()
    # With the tools listed the gateway knows rec has no `no_such_tool`: the router refuses it itself.
    status, _, listed = await client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 200 and "rec__transfer" in {t["name"] for t in listed["result"]["tools"]}, listed

    async def answers(tool: str, first_id: int) -> list[str]:
        out = []
        for n in range(2):
            out.append(reason((await client.call(tool, {}, request_id=first_id + n))[2]))
        return out

    if rule == "per_principal":  # one budget for both names: two calls in all, then both are refused alike
        assert await answers("rec__transfer", 10) == ["unknown_tool", "unknown_tool"]
        assert await answers("rec__no_such_tool", 20) == ["rate_limited", "rate_limited"]
        assert await answers("rec__transfer", 30) == ["rate_limited", "rate_limited"]
    else:  # a budget per name: each answers twice as a denial, then is refused
        for first_id, tool in ((10, "rec__transfer"), (20, "rec__no_such_tool"), (30, "nowhere__thing")):
            assert await answers(tool, first_id) == ["unknown_tool", "unknown_tool"], tool
            assert await answers(tool, first_id + 5) == ["rate_limited", "rate_limited"], tool
    assert recorder.calls == []
