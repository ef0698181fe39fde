"""The agent's own bearer token reaches no upstream in what the gateway sends it, not only in headers: a token the
agent wrote into a message (`_meta`, arguments, a notification) is replaced by a mark before it is read, a mark that
policy still reads as a secret in the arguments (`context.args_contain_secret`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
from mcp.server.mcpserver import MCPServer

from tests.support.servers import _lowlevel, run_asgi
from tests.support.tokens import TestIssuer

ACCEPT = "application/json, text/event-stream"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def docs_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("docs")

    @server.tool()
    def echo(value: str) -> str:
        return value

    @server.resource("docs://readme")
    def readme() -> str:
        return "hello"

    return server


def recording(app: Any, seen: list[bytes]) -> Any:
    """Every request the upstream gets, as one blob: method, path, query, headers and body."""
    async def wrapper(scope: Scope, receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body, more = b"", scope["method"] == "POST"
        while more:
            chunk = await receive()
            body, more = body + chunk.get("body", b""), chunk.get("more_body", False)
        seen.append(b" ".join([scope["method"].encode(), scope["path"].encode(), scope["query_string"],
                               *(k + b": " + v for k, v in scope["headers"]), body]))
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)
    return wrapper


class Agent:
    """Raw JSON-RPC over one streamable-HTTP session, with a bearer token."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, version: str = "2025-06-18") -> None:
        self.http, self.url, self.token, self.version, self.session_id, self.ids = http, url, token, version, "", 0

    async def post(self, message: Any) -> tuple[int, Any]:
        headers = {"Accept": ACCEPT, "MCP-Protocol-Version": self.version, "Authorization": f"Bearer {self.token}"}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        # `\u0065` for `e` in the token where the message says ESCAPED: the same text to a JSON reader
        text = json.dumps(message).replace("ESCAPED", self.token.replace("e", "\\u0065"))
        headers["Content-Type"] = "application/json"
        async with self.http.post(self.url, data=text, headers=headers) as resp:
            self.session_id = resp.headers.get("Mcp-Session-Id", self.session_id)
            text = await resp.text()
        data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        body = data[-1] if len(data) == 1 else f"[{','.join(data)}]" if data else text
        return resp.status, json.loads(body) if body.strip() else None

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        status, body = await self.post({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        assert status == 200 and isinstance(body, dict), (status, body)
        return body

    async def open(self) -> None:
        await self.request("initialize", {"protocolVersion": self.version, "capabilities": {},
                                          "clientInfo": {"name": f"agent {self.token}", "version": "1"}})
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})


async def test_the_agents_token_written_into_messages_reaches_no_upstream(start_gateway, permissive_policies,
                                                                          tmp_path) -> None:
    issuer = TestIssuer(tmp_path)
    seen: list[bytes] = []
    app = _lowlevel(docs_server()).streamable_http_app(host="127.0.0.1")
    async with run_asgi(recording(app, seen)) as base:
        gw = await start_gateway({
            "upstreams": [{"name": "docs", "url": f"{base}/mcp", "credentials": {"mode": "minted"}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")},
            "decision_log": {"path": str(tmp_path / "decisions.jsonl")}})
        token = issuer.mint("spiffe://acme/agent-1", aud=[gw.mcp, f"{gw.mcp}/docs"], tenant="acme")
        # A client that copies its own credential into `_meta` (or a prompt-injected agent pasting it into an
        # argument): the upstream would hold a token the gateway accepts as this agent.
        meta = {"authorization": f"Bearer {token}", "escaped": "ESCAPED"}
        async with aiohttp.ClientSession() as http:
            for url, prefix, uri in ((gw.mcp, "docs__", "customs://docs/docs://readme"),
                                     (f"{gw.mcp}/docs", "", "docs://readme")):
                agent = Agent(http, url, token)
                await agent.open()
                answer = await agent.request("tools/call", {"name": f"{prefix}echo",
                                                            "arguments": {"value": f"token={token}"}, "_meta": meta})
                assert answer["result"]["content"][0]["text"] == "token=[REDACTED:agent-token]", answer
                assert "result" in await agent.request("resources/read", {"uri": uri, "_meta": meta})
                assert "result" in await agent.request("tools/list", {"_meta": meta})
                status, _ = await agent.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed",
                                              "params": {"_meta": meta}})
                assert status == 202
        await gw.runner.cleanup()  # the decision log is drained
    assert seen, "the upstream got no request"
    leaked = [blob[:200] for blob in seen if token.encode() in blob.replace(b"\\u0065", b"e")]
    assert leaked == []
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    calls = [r for r in records if r.get("type") == "decision" and r.get("method") == "tools/call"]
    assert len(calls) == 2 and all(r["authz_input"]["args_contain_secret"] for r in calls), calls


async def test_a_batch_member_carrying_the_agents_token_reaches_no_upstream(start_gateway, permissive_policies,
                                                                            tmp_path) -> None:
    """A 2025-03-26 batch's members are scrubbed one by one, as single messages are."""
    issuer = TestIssuer(tmp_path)
    seen: list[bytes] = []
    app = _lowlevel(docs_server()).streamable_http_app(host="127.0.0.1")
    async with run_asgi(recording(app, seen)) as base:
        gw = await start_gateway({
            "upstreams": [{"name": "docs", "url": f"{base}/mcp"}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)}})
        token = issuer.mint("spiffe://acme/agent-1", aud=gw.mcp, tenant="acme")
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp, token, version="2025-03-26")
            await agent.open()
            status, answers = await agent.post([
                {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                 "params": {"name": "docs__echo", "arguments": {"value": token}, "_meta": {"copy": token}}},
                {"jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": {"_meta": {"t": token}}}])
        assert status == 200, answers
        assert [a["result"]["content"][0]["text"] for a in answers] == ["[REDACTED:agent-token]"], answers
    assert [blob[:200] for blob in seen if token.encode() in blob] == []


async def test_a_tool_leaving_the_organisation_is_denied_the_agents_token(start_gateway, permissive_policies,
                                                                          tmp_path) -> None:
    """The shipped `no-secrets-leaving-org` forbid, beside allow-all: an agent pasting its own token into the arguments
    of a tool that leaves the organisation is denied as before the token was taken out (the mark reads as a secret),
    and the upstream gets no call."""
    guards = (Path(__file__).resolve().parents[2] / "policies" / "guards.cedar").read_text()
    start = guards.index('@id("no-secrets-leaving-org")')
    (permissive_policies / "no_secrets.cedar").write_text(guards[start:guards.index(";", start) + 1] + "\n")
    issuer = TestIssuer(tmp_path)
    seen: list[bytes] = []
    app = _lowlevel(docs_server()).streamable_http_app(host="127.0.0.1")
    async with run_asgi(recording(app, seen)) as base:
        gw = await start_gateway({
            "upstreams": [{"name": "docs", "url": f"{base}/mcp", "tools": {"echo": {"leaves_org": True}}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)}})
        token = issuer.mint("spiffe://acme/agent-1", aud=gw.mcp, tenant="acme")
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp, token)
            await agent.open()
            assert "result" in await agent.request("tools/call", {"name": "docs__echo", "arguments": {"value": "x"}})
            calls = len(seen)
            pasted = {"name": "docs__echo", "arguments": {"value": f"Bearer {token}"}}
            answer = await agent.request("tools/call", pasted)
    assert answer["error"]["data"]["reason"] == "unknown_tool", answer
    assert len(seen) == calls
