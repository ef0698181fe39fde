"""Slow clients against a real gateway process: idle connections are closed, trickled bodies are refused.

A client that opens connections and sends nothing, or sends a body a byte at a time, holds a socket
and a handler each (slowloris). `listen.idle_timeout_s` closes a connection with no request in
progress; `listen.body_timeout_s` answers a body that has not arrived in full with 408 `body_timeout`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import GatewayProcess
from tests.support.servers import stdio_command
from tests.support.tokens import TestIssuer

Spawn = Callable[..., Awaitable[GatewayProcess]]


async def slow_gateway(spawn_gateway: Spawn, permissive_policies: Path) -> tuple[GatewayProcess, int]:
    gw = await spawn_gateway({
        "listen": {"idle_timeout_s": 1, "body_timeout_s": 1},
        "upstreams": [{"name": "inventory", "command": stdio_command("inventory")}],
        "policies": {"dir": str(permissive_policies), "watch": False},
    })
    return gw, int(gw.url.rsplit(":", 1)[1])


async def test_a_connection_that_never_sends_a_request_is_closed(spawn_gateway: Spawn,
                                                                 permissive_policies: Path) -> None:
    _gw, port = await slow_gateway(spawn_gateway, permissive_policies)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), 15) == b""  # EOF: the gateway hung up
    finally:
        writer.close()


async def test_a_trickled_body_is_refused_with_408(spawn_gateway: Spawn, permissive_policies: Path) -> None:
    _gw, port = await slow_gateway(spawn_gateway, permissive_policies)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    status, payload = await trickle(port, "/mcp", {"Content-Type": "application/json",
                                                   "Accept": "application/json, text/event-stream"}, body)
    assert status.startswith(b"HTTP/1.1 408"), status
    error = json.loads(payload)["error"]
    assert (error["code"], error["data"]["reason"]) == (-32021, "body_timeout")


async def test_ordinary_requests_are_unaffected(spawn_gateway: Spawn, permissive_policies: Path) -> None:
    gw, _port = await slow_gateway(spawn_gateway, permissive_policies)
    init: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "t", "version": "1"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.mcp, json=init, headers={"Accept": "application/json, text/event-stream"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["protocolVersion"] == "2025-11-25"


async def trickle(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, bytes]:
    """POST `path` announcing all of `body` but sending only its first bytes: (status line, payload)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                     .encode() + body[:5])
        await writer.drain()
        # The rest never comes. Read the answer, not to EOF: aiohttp's lingering close keeps the socket ~10 s.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        if b"chunked" in head.lower():
            payload = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)
            payload = payload.split(b"\r\n")[1]
        else:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            payload = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    return head.split(b"\r\n")[0], payload


async def test_trickled_bodies_outside_mcp_are_refused_with_408(spawn_gateway: Spawn, permissive_policies: Path,
                                                                tmp_path: Path) -> None:
    # The approvals API and page, introspection and the tools admin API read bodies too: the same timer.
    issuer = TestIssuer(tmp_path)
    gw = await spawn_gateway({
        "listen": {"idle_timeout_s": 1, "body_timeout_s": 1},
        "identity": {"mode": "jwt", "issuers": [issuer.config()]},
        "upstreams": [{"name": "inventory", "command": stdio_command("inventory")}],
        "policies": {"dir": str(permissive_policies), "watch": False},
    })
    port = int(gw.url.rsplit(":", 1)[1])
    bearer = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['admins'])}"}
    as_json = {**bearer, "Content-Type": "application/json"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    # Four connections at once, each on its own body timer: one timeout's wait in all, not four.
    approval, introspect, tool, signin = await asyncio.gather(
        trickle(port, "/api/approvals/apr_0/approve", as_json, b'{"comment": "fine by me"}'),
        trickle(port, "/oauth/introspect", form, b"token=" + b"x" * 64),
        trickle(port, "/api/tools/inventory/get_stock/approve", as_json, b'{"hash": "sha256:' + b"0" * 64 + b'"}'),
        trickle(port, "/approvals/signin", form, b"csrf=abc&token=" + b"x" * 64))
    status, payload = approval
    assert status == b"HTTP/1.1 408 Request Timeout", status
    assert json.loads(payload)["error"]["reason"] == "body_timeout"
    status, payload = introspect
    assert status == b"HTTP/1.1 408 Request Timeout", status
    assert json.loads(payload)["error"] == "invalid_request"  # RFC 6749's shape, as the endpoint's other errors
    status, payload = tool
    assert status == b"HTTP/1.1 408 Request Timeout" and json.loads(payload) == {"error": {"reason": "body_timeout"}}
    status, _ = signin
    assert status == b"HTTP/1.1 408 Request Timeout", status
    async with aiohttp.ClientSession() as http:  # a body sent in full is read as before
        async with http.post(f"{gw.url}/oauth/introspect", data={"token": "not-ours"}) as resp:
            assert resp.status == 200 and await resp.json() == {"active": False}
        async with http.post(f"{gw.url}/api/approvals/apr_0/approve", json={"comment": "ok"}, headers=bearer) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["reason"] == "not_found"
