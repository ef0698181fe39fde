"""What counts toward a task's totals, through a real gateway and real upstreams.

- Only positive amounts count (a negative "payment" must not buy room under the 10,000 cap), and the
  shipped permit holds an amount that did not count for a person.
- A call the upstream refused with a JSON-RPC error did not execute: its reservation is given back.
  A tool result with `isError: true` did execute (the tool ran) and keeps counting.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.lifecycle.conftest import Upstreams, executed_payments, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer


def pay(amount: Any, memo: str = "") -> dict[str, Any]:
    return {"account": "acme-1", "amount": amount, "memo": memo}


async def test_negative_amounts_neither_offset_the_total_nor_pass_without_approval(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path) -> None:
    gw = await start_gateway(gateway_config(upstreams, issuer, policies))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", pay(9000))).is_error
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(-1_000_000)))
        assert reason == "approval_pending"  # not a payment the cap can bound: a person decides
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(250_000)))
        assert reason == "approval_pending"  # 9,000 + 250,000: the negative amount bought no room
    assert [p["amount"] for p in await executed_payments(upstreams)] == [9000]


async def test_negative_amounts_do_not_count_even_where_a_policy_lets_them_through(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path) -> None:
    # The task-state side on its own: a policy set whose permit ignores not_counted (as the shipped one
    # did) lets the negative payment run, but the total it leaves still stops what follows.
    tools = policies / "tools.cedar"
    tools.write_text(re.sub(r'  !\(context\.task has not_counted[^\n]*\n', "", tools.read_text()))
    gw = await start_gateway(gateway_config(upstreams, issuer, policies))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", pay(9000))).is_error
        assert not (await client.call_tool("payments__pay", pay(-1_000_000))).is_error
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(250_000)))
        assert reason == "approval_pending"
    assert [p["amount"] for p in await executed_payments(upstreams)] == [9000, -1_000_000]


def strict_payments() -> tuple[MCPServer[Any], list[dict[str, Any]]]:
    """A payments server that refuses some calls before running them (a JSON-RPC error) and fails others
    while running them (a tool error, `isError: true`)."""
    server: MCPServer[Any] = MCPServer("payments")
    executed: list[dict[str, Any]] = []

    @server.tool()
    def pay(account: str, amount: float, memo: str = "") -> str:
        """Pay `amount` to `account`."""
        if memo == "reject":
            raise MCPError(code=-32602, message="unknown account")  # refused: nothing ran
        executed.append({"account": account, "amount": amount, "memo": memo})
        if memo == "fail":
            raise RuntimeError("bank timed out after debiting")  # ran, then failed: isError result
        if memo == "internal":
            raise MCPError(code=-32603, message="ledger unavailable after debiting")  # ran, then a JSON-RPC error
        return f"paid {amount} to {account}"

    return server, executed


@pytest.fixture
async def strict_upstreams(upstreams: Upstreams) -> AsyncIterator[tuple[Upstreams, list[dict[str, Any]]]]:
    server, executed = strict_payments()
    async with run_http_server(server) as url:
        yield Upstreams(upstreams.inventory, url, []), executed


async def test_a_call_the_upstream_refused_gives_its_share_back_and_a_tool_error_keeps_it(
        start_gateway: Any, strict_upstreams: tuple[Upstreams, list[dict[str, Any]]], issuer: TestIssuer,
        policies: Path) -> None:
    up, executed = strict_upstreams
    gw = await start_gateway(gateway_config(up, issuer, policies))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("payments__pay", pay(9000, "reject"))
        assert refused.value.error.code == -32602 and "unknown account" in refused.value.error.message
        # The refused 9,000 did not execute, so it does not count: 9,000 still fits under 10,000.
        assert not (await client.call_tool("payments__pay", pay(9000))).is_error
        failed = await client.call_tool("payments__pay", pay(1000, "fail"))
        assert failed.is_error  # the tool ran: its 1,000 counts (total 10,000)
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(1)))
        assert reason == "approval_pending"
    assert [(p["amount"], p["memo"]) for p in executed] == [(9000, ""), (1000, "fail")]


async def test_an_upstream_error_after_running_keeps_its_share(
        start_gateway: Any, strict_upstreams: tuple[Upstreams, list[dict[str, Any]]], issuer: TestIssuer,
        policies: Path) -> None:
    """Only the errors that refuse the request itself (-32600/-32601/-32602) give a share back: a tool that
    pays and then answers -32603 must not let a task go past its cap by failing late."""
    up, executed = strict_upstreams
    gw = await start_gateway(gateway_config(up, issuer, policies))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("payments__pay", pay(6000, "internal"))
        assert failed.value.error.code == -32603  # the tool ran (6,000 went out), then failed
        # 6,000 more would make 12,000: held for approval, not run
        assert (await reason_of(client.call_tool("payments__pay", pay(6000, "internal"))))[0] == "approval_pending"
    assert [(p["amount"], p["memo"]) for p in executed] == [(6000, "internal")]
