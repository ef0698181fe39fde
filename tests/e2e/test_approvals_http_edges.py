"""The approvers' API at its edges, through a real gateway: methods aiohttp adds on its own (HEAD), calls decided
too late (expired), and the shapes of refusals an approver's client reads (docs/approvals.md, REST API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.contract import CONTRACT_POLICIES, SHOPPER, Agent, Api, reason, until, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

APPROVERS = """
@id("approvers-decide")
permit (principal in Group::"approvers", action == Action::"approve", resource);
"""


@dataclass
class Edge:
    gw: Any
    api: Api
    agent: Agent
    alice: str

    async def hold(self, amount: int) -> str:
        """A payment held for approval (the agent answered `approval_pending` at once): its approval id."""
        status, held, _ = await self.agent.call("payments__pay", {"account": "acme-1", "amount": amount})
        assert status == 200 and reason(held) == "approval_pending", held
        return str(held["error"]["data"]["approval_id"])


@pytest.fixture
def ttl_s() -> float:
    return 600.0  # the expiry test overrides it


@pytest.fixture
async def edge(start_gateway: Any, tmp_path: Path, ttl_s: float) -> AsyncIterator[Edge]:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p",
                                                                         CONTRACT_POLICIES + APPROVERS))},
                                  "approvals": {"ttl_s": ttl_s}})
        api = Api(http, gw.url, issuer)
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()
        yield Edge(gw, api, agent, api.person("alice", "approvers"))


async def test_head_on_the_event_stream_is_headers_only(edge: Edge) -> None:
    """aiohttp answers HEAD on every GET route: on the live-update stream it used to send the stream's bytes after
    the head (`: connected`, then keep-alives until the token expired), which no HEAD answer may carry, so the client
    read them as the next answer's status line (`Bad status line`) and the stream's handler stayed open."""
    headers = {"Authorization": f"Bearer {edge.alice}"}
    async with asyncio.timeout(10), aiohttp.ClientSession() as http:
        async with http.head(f"{edge.gw.url}/api/approvals/events", headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert await resp.read() == b""
        async with http.get(f"{edge.gw.url}/api/approvals", headers=headers) as resp:  # the connection is reused
            assert resp.status == 200 and set(await resp.json()) == {"items"}
        async with http.head(f"{edge.gw.url}/api/approvals/events") as resp:
            assert resp.status == 401  # HEAD is authenticated as GET is


@pytest.mark.parametrize("ttl_s", [1.0])
async def test_deciding_an_expired_call_is_409_already_decided(edge: Edge) -> None:
    """An approve or deny that comes after `approvals.ttl_s` changes nothing: 409 `already_decided` with the item, in
    state `expired`, whether or not the sweep has marked it yet; the agent's retry is told `approval_expired`."""
    approval_id = await edge.hold(5)

    async def past_expiry() -> bool:
        item = await edge.api.approval(approval_id, edge.alice)
        return bool(item["state"] == "expired")

    await until(past_expiry, "the approval's expiry")
    for verb in ("approve", "deny"):
        status, body = await edge.api.request("POST", f"/api/approvals/{approval_id}/{verb}", edge.alice,
                                              {"comment": "too late"})
        assert status == 409 and body["error"]["reason"] == "already_decided", (verb, body)
        assert body["error"]["approval"]["state"] == "expired" and body["error"]["approval"]["id"] == approval_id
        assert body["error"]["approval"]["decided_by"] is None, body
    status, late, _ = await edge.agent.call("payments__pay", {"account": "acme-1", "amount": 5})
    assert status == 200 and reason(late) == "approval_expired" and late["error"]["data"]["approval_id"] == approval_id


async def test_host_and_origin_refusals_on_the_api_are_in_its_error_shape(edge: Edge) -> None:
    """A Host the gateway does not serve (DNS rebinding) or a foreign Origin is 403 on every path; on the approvers'
    API in its documented shape, `{"error": {"reason": ..., "message": ...}}` (the OpenAPI file's Error), as its other
    refusals are. It was the JSON-RPC error of the MCP endpoints (`error.data.reason`, `error.code`), with no
    `error.reason` for an approver's client to read. The call is not decided."""
    approval_id = await edge.hold(6)
    bearer = {"Authorization": f"Bearer {edge.alice}"}
    port = edge.gw.url.rsplit(":", 1)[1]
    for method, path, headers, expected in (
            ("GET", "/api/approvals?state=pending", {"Host": f"evil.example:{port}"}, "host_forbidden"),
            ("GET", f"/api/approvals/{approval_id}", {"Host": "evil.example"}, "host_forbidden"),
            ("POST", f"/api/approvals/{approval_id}/approve", {"Host": "evil.example"}, "host_forbidden"),
            ("POST", f"/api/approvals/{approval_id}/approve", {"Origin": "http://evil.example"}, "origin_forbidden"),
            ("POST", f"/api/approvals/{approval_id}/deny", {"Origin": "http://evil.example"}, "origin_forbidden")):
        status, body = await edge.api.request(method, path, body={"comment": "x"} if method == "POST" else None,
                                              headers={**bearer, **headers})
        assert status == 403 and body == {"error": {"reason": expected, "message": body["error"]["message"]}}, (
            path, headers, body)
        assert body["error"]["message"], body
    assert (await edge.api.approval(approval_id, edge.alice))["state"] == "pending"
    status, body, _ = await edge.agent.send({"jsonrpc": "2.0", "id": 3, "method": "ping"},
                                            {"Host": "evil.example"})
    assert status == 403 and reason(body) == "host_forbidden" and body["error"]["code"] == -32013, body  # MCP: JSON-RPC


async def test_bad_decision_bodies_are_400_and_decide_nothing(edge: Edge) -> None:
    """Each body the API cannot take is refused 400 in its shape (`invalid_body`; a body that does not decode under
    its Content-Encoding `parse_error`), never a 500, and the call stays pending; then an empty body approves."""
    approval_id = await edge.hold(7)
    url = f"{edge.gw.url}/api/approvals/{approval_id}/approve"
    json_type = {"Authorization": f"Bearer {edge.alice}", "Content-Type": "application/json"}
    bodies: list[tuple[bytes, dict[str, str], str]] = [
        (b"{bad", {}, "invalid_body"), (b"[]", {}, "invalid_body"), (b'"ok"', {}, "invalid_body"),
        (b'{"comment": 5}', {}, "invalid_body"), (b'{"comment": ["a"]}', {}, "invalid_body"),
        (b'{"comment": "' + b"x" * 2001 + b'"}', {}, "invalid_body"),
        (b'{"comment": "ok"}', {"Content-Type": "application/json; charset=no-such-charset"}, "invalid_body"),
        (b"\xff\xfe\x00", {}, "invalid_body"),
        (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, "parse_error"),
    ]
    async with aiohttp.ClientSession() as http:
        for body, headers, expected in bodies:
            async with http.post(url, data=body, headers={**json_type, **headers}) as resp:
                answer = await resp.json()
                assert resp.status == 400 and answer["error"]["reason"] == expected, (body[:40], answer)
        assert (await edge.api.approval(approval_id, edge.alice))["state"] == "pending"
        async with http.post(url, headers={"Authorization": f"Bearer {edge.alice}"}) as resp:  # no body: no comment
            decided = await resp.json()
            assert resp.status == 200 and decided["state"] == "approved" and decided["comment"] is None, decided


async def test_a_call_held_on_the_pass_through_endpoint_is_the_same_call(edge: Edge) -> None:
    """`/mcp/{upstream}` names tools unchanged: `pay` there is `payments__pay` on `/mcp`, one held call with one
    approval (upstream `payments`, tool `pay`), released once whichever endpoint the retry comes through."""
    direct = await Agent(edge.api.http, f"{edge.gw.mcp}/payments", edge.agent.token).open()
    status, held, _ = await direct.call("pay", {"account": "acme-1", "amount": 9})
    assert status == 200 and reason(held) == "approval_pending", held
    approval_id = held["error"]["data"]["approval_id"]
    assert await edge.hold(9) == approval_id  # the aggregated name joins the same item
    item = await edge.api.approval(approval_id, edge.alice)
    assert (item["upstream"], item["tool"], item["args"]) == ("payments", "pay", {"account": "acme-1", "amount": 9})
    status, _ = await edge.api.request("POST", f"/api/approvals/{approval_id}/approve", edge.alice, {})
    assert status == 200
    _, done, _ = await direct.call("pay", {"account": "acme-1", "amount": 9})
    assert "result" in done, done
    _, again, _ = await edge.agent.call("payments__pay", {"account": "acme-1", "amount": 9})
    assert reason(again) == "approval_pending" and again["error"]["data"]["approval_id"] != approval_id, again
