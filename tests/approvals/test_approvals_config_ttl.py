"""approvals.ttl_s is a finite number of seconds: `.inf` (meant as "never expires") passed `config check`, and every
held call then failed with an OverflowError (answered internal_error) when its keep-alive said the time left."""

from __future__ import annotations

import asyncio

import pytest

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from tests.approvals.conftest import Sink, call_context

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]


@pytest.mark.parametrize("ttl", [float("inf"), 1e308, 31_536_001])
def test_an_endless_or_overlong_ttl_is_a_config_error(ttl: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "approvals": {"ttl_s": ttl}})
    assert [p for p in info.value.problems if p.startswith("approvals.ttl_s:")], info.value.problems


async def test_the_longest_ttl_holds_a_call() -> None:
    config = parse_config({"upstreams": UPSTREAMS, "approvals": {"ttl_s": 31_536_000}}).approvals
    ctx = call_context(notify=Sink())
    ctx.cancelled.set()  # held, its keep-alive sent, then withdrawn
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(ApproveStage(MemoryApprovalStore(), config)(ctx), 10)
    assert info.value.reason == "approval_cancelled"
    assert "expires in 31535" in ctx.notify.messages[0]["params"]["data"]


@pytest.mark.parametrize("quorum", [21, 1000])
def test_a_quorum_past_the_policies_own_limit_is_a_config_error(quorum: int) -> None:
    """`@quorum("N")` is refused past MAX_QUORUM ("a typo, not a policy"), but `approvals.quorum` took any number:
    `quorum: 200` (meant 2) passed `config check` and no held call could ever be released."""
    from gateway.authz.policyset import MAX_QUORUM

    assert quorum > MAX_QUORUM
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "approvals": {"quorum": quorum}})
    assert [p for p in info.value.problems if p.startswith("approvals.quorum:")], info.value.problems
    assert parse_config({"upstreams": UPSTREAMS, "approvals": {"quorum": MAX_QUORUM}}).approvals.quorum == MAX_QUORUM
