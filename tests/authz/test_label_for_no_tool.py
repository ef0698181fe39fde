"""A tool label keyed by a name the upstream lists no tool under (`list_sku` for `list_skus`) labels nothing: the
tool keeps the defaults, and a `sensitivity: restricted` meant for it never reaches a policy, so
restricted-needs-clearance lets every agent read it. Config check cannot know an upstream's tools; the gateway
warns once the upstream's whole tool list is known."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.servers import inventory_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]


async def test_a_label_for_a_tool_the_upstream_does_not_list_is_warned_about_once(
        start_gateway: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    async with run_http_server(inventory_server()) as inv:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inv,
                           "tools": {"list_sku": {"sensitivity": "restricted"},
                                     "get_stock": {"sensitivity": "internal"},
                                     "inventory://skus": {"sensitivity": "internal"}}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies"), "watch": False}})
        token = issuer.mint("spiffe://customs.demo/agent/reader", aud=gw.mcp, alg="ES256", tenant="acme")
        with caplog.at_level(logging.WARNING, logger="customs.listing"):
            for _ in range(2):
                async with sdk_client(gw.mcp, token) as client:
                    names = {tool.name for tool in (await client.list_tools()).tools}
        assert "inventory__list_skus" in names  # unlabelled: not restricted, so listed to an agent without clearance
    warned = [r.getMessage() for r in caplog.records if "labels" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("upstreams[0].tools.list_sku: inventory lists no tool of that name")
    assert "get_stock" not in warned[0].split("(")[0] and "inventory://skus" not in warned[0]
