"""Every request that reaches an upstream is decided: item requests, session methods, denials that read
like missing items, config labels on prompts and resources, and no upstream traffic for a call denied
before the upstream's tools are known. Real gateway, real SDK upstream, raw JSON-RPC for exact answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations

from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
GOOD = "spiffe://t.test/agent/good"
BAD = "spiffe://t.test/agent/bad"
VERSION = "2025-11-25"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
POLICIES = f"""
@id("good-reads")
permit(principal == Agent::"{GOOD}", action, resource) when {{ resource.read_only }};

@id("restricted-needs-clearance")
forbid(principal, action in [Action::"call_tool", Action::"list_tools", Action::"get_prompt",
                              Action::"read_resource"], resource)
when {{ resource.sensitivity == "restricted" }}
unless {{ principal has clearance && principal.clearance == "restricted" }};
"""
# Labels by name: a prompt and a resource marked restricted, a tool fixed as not read-only.
LABELS = {"secret_prompt": {"sensitivity": "restricted"}, "mem://secret": {"sensitivity": "restricted"},
          "wipe": {"read_only": False}}


@dataclass
class Upstream:
    """What reached the upstream: MCP handler calls (method target) and every HTTP request."""

    handled: list[str] = field(default_factory=list)
    requests: list[SeenRequest] = field(default_factory=list)


def coverage_server(seen: Upstream) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("mem")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(value: str) -> str:
        seen.handled.append("tools/call echo")
        return value

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def wipe() -> str:  # claims read-only; config says otherwise
        seen.handled.append("tools/call wipe")
        return "wiped"

    @server.prompt()
    def greet(name: str) -> str:
        seen.handled.append("prompts/get greet")
        return f"hello {name}"

    @server.prompt()
    def secret_prompt() -> str:
        seen.handled.append("prompts/get secret_prompt")
        return "the secret"

    @server.resource("mem://open")
    def open_resource() -> str:
        return "open"

    @server.resource("mem://secret")
    def secret_resource() -> str:
        seen.handled.append("resources/read mem://secret")
        return "secret"

    @server.resource("mem://items/{id}")
    def item(id: str) -> str:
        return id

    lowlevel = server._lowlevel_server

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        seen.handled.append("logging/setLevel")
        return types.EmptyResult()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        seen.handled.append(f"resources/subscribe {params.uri}")
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        seen.handled.append(f"resources/unsubscribe {params.uri}")
        return types.EmptyResult()

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        ref = params.ref
        seen.handled.append(f"completion/complete {getattr(ref, 'name', None) or getattr(ref, 'uri', None)}")
        return types.CompleteResult(completion=types.Completion(values=["x"], total=1, has_more=False))

    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    lowlevel.add_request_handler("completion/complete", types.CompleteRequestParams, complete)
    return server


class Agent:
    """A raw JSON-RPC client with one session on one endpoint, answers returned as they came."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url, self.headers, self._id = http, url, {**HEADERS, "Authorization": f"Bearer {token}"}, 0

    async def start(self) -> Agent:
        init = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        async with self.http.post(self.url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init},
                                  headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            self.headers = {**self.headers, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"],
                            "MCP-Protocol-Version": VERSION}
        async with self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                  headers=self.headers) as resp:
            assert resp.status == 202
        return self

    async def ask(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        body = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params or {}}
        async with self.http.post(self.url, json=body, headers=self.headers) as resp:
            text = await resp.text()
            if resp.content_type != "text/event-stream":
                answer: dict[str, Any] = json.loads(text)
                return answer
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                if message.get("id") == self._id:
                    return dict(message)
        raise AssertionError(f"no answer to {method}: {text}")

    async def error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = await self.ask(method, params)
        assert "error" in answer, answer
        return dict(answer["error"])


@dataclass
class Env:
    gw: Any
    issuer: TestIssuer
    seen: Upstream
    http: aiohttp.ClientSession

    async def agent(self, sub: str, path: str = "", **claims: Any) -> Agent:
        token = self.issuer.mint(sub, aud=self.gw.mcp, tenant="t", claims=claims or None)
        return await Agent(self.http, self.gw.mcp + path, token).start()


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (policies / "coverage.cedar").write_text(POLICIES)
    issuer = TestIssuer(tmp_path)
    seen = Upstream()
    async with run_http_server(coverage_server(seen), requests=seen.requests) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "mem", "url": url, "tools": LABELS}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(policies), "watch": False},
        })
        yield Env(gw, issuer, seen, http)


def expect(error: dict[str, Any], code: int, message: str, reason: str) -> None:
    assert error == {"code": code, "message": message, "data": {"reason": reason}}


@pytest.mark.parametrize("path", ["", "/mem"], ids=["aggregated", "pass-through"])
async def test_item_and_session_requests_of_a_denied_agent_reach_no_upstream(env: Env, path: str) -> None:
    bad = await env.agent(BAD, path)
    prompt = "greet" if path else "mem__greet"
    ns = "" if path else "customs://mem/"  # resource URIs in the aggregated view name their upstream
    expect(await bad.error("completion/complete", {"ref": {"type": "ref/prompt", "name": prompt},
                                                   "argument": {"name": "name", "value": "a"}}),
           -32602, f"Unknown prompt: {prompt}", "unknown_prompt")
    expect(await bad.error("completion/complete", {"ref": {"type": "ref/resource", "uri": f"{ns}mem://items/{{id}}"},
                                                   "argument": {"name": "id", "value": "1"}}),
           -32002, f"Resource not found: {ns}mem://items/{{id}}", "unknown_resource")
    for method in ("resources/subscribe", "resources/unsubscribe"):
        expect(await bad.error(method, {"uri": f"{ns}mem://open"}), -32002, f"Resource not found: {ns}mem://open",
               "unknown_resource")
    # A session setting for upstreams it may use nothing on: accepted, sent nowhere.
    assert (await bad.ask("logging/setLevel", {"level": "debug"}))["result"] == {}
    for method in ("tasks/list", "custom/anything"):
        expect(await bad.error(method), -32601, f"Method not found: {method}", "method_not_found")
    assert env.seen.handled == []


@pytest.mark.parametrize("path", ["", "/mem"], ids=["aggregated", "pass-through"])
async def test_item_requests_of_an_allowed_agent_reach_the_upstream(env: Env, path: str) -> None:
    good = await env.agent(GOOD, path)
    prefix, ns = ("", "") if path else ("mem__", "customs://mem/")
    done = await good.ask("completion/complete", {"ref": {"type": "ref/prompt", "name": f"{prefix}greet"},
                                                  "argument": {"name": "name", "value": "a"}})
    assert done["result"]["completion"]["values"] == ["x"]
    await good.ask("completion/complete", {"ref": {"type": "ref/resource", "uri": f"{ns}mem://items/{{id}}"},
                                           "argument": {"name": "id", "value": "1"}})
    assert (await good.ask("resources/subscribe", {"uri": f"{ns}mem://open"}))["result"] == {}
    assert (await good.ask("resources/unsubscribe", {"uri": f"{ns}mem://open"}))["result"] == {}
    assert (await good.ask("logging/setLevel", {"level": "debug"}))["result"] == {}
    # The same requests about items labelled restricted in config are refused like missing items.
    expect(await good.error("completion/complete", {"ref": {"type": "ref/prompt", "name": f"{prefix}secret_prompt"},
                                                    "argument": {"name": "x", "value": "a"}}),
           -32602, f"Unknown prompt: {prefix}secret_prompt", "unknown_prompt")
    expect(await good.error("resources/subscribe", {"uri": f"{ns}mem://secret"}), -32002,
           f"Resource not found: {ns}mem://secret", "unknown_resource")
    assert env.seen.handled == ["completion/complete greet", "completion/complete mem://items/{id}",
                                "resources/subscribe mem://open", "resources/unsubscribe mem://open",
                                "logging/setLevel"]


async def test_denied_prompts_and_resources_read_exactly_like_missing_ones(env: Env) -> None:
    bad = await env.agent(BAD)
    denied_prompt = await bad.error("prompts/get", {"name": "mem__greet", "arguments": {"name": "a"}})
    missing_prompt = await bad.error("prompts/get", {"name": "nowhere_greet"})
    assert denied_prompt == {**missing_prompt, "message": missing_prompt["message"].replace("nowhere_greet",
                                                                                            "mem__greet")}
    expect(denied_prompt, -32602, "Unknown prompt: mem__greet", "unknown_prompt")
    denied_resource = await bad.error("resources/read", {"uri": "customs://mem/mem://open"})
    missing_resource = await bad.error("resources/read", {"uri": "nowhere+mem://open"})
    assert denied_resource == {**missing_resource, "message": "Resource not found: customs://mem/mem://open"}
    expect(denied_resource, -32002, "Resource not found: customs://mem/mem://open", "unknown_resource")
    passthrough = await env.agent(BAD, "/mem")
    expect(await passthrough.error("prompts/get", {"name": "greet", "arguments": {"name": "a"}}),
           -32602, "Unknown prompt: greet", "unknown_prompt")
    expect(await passthrough.error("resources/read", {"uri": "mem://open"}),
           -32002, "Resource not found: mem://open", "unknown_resource")
    assert env.seen.handled == []


async def test_config_labels_apply_to_prompts_and_resources(env: Env) -> None:
    good = await env.agent(GOOD)
    prompts = [p["name"] for p in (await good.ask("prompts/list"))["result"]["prompts"]]
    assert prompts == ["mem__greet"]
    resources = [r["uri"] for r in (await good.ask("resources/list"))["result"]["resources"]]
    assert resources == ["customs://mem/mem://open"]
    expect(await good.error("prompts/get", {"name": "mem__secret_prompt"}), -32602,
           "Unknown prompt: mem__secret_prompt", "unknown_prompt")
    expect(await good.error("resources/read", {"uri": "customs://mem/mem://secret"}), -32002,
           "Resource not found: customs://mem/mem://secret", "unknown_resource")
    assert env.seen.handled == []
    cleared = await env.agent(GOOD, clearance="restricted")
    assert "mem__secret_prompt" in [p["name"] for p in (await cleared.ask("prompts/list"))["result"]["prompts"]]
    assert "result" in await cleared.ask("prompts/get", {"name": "mem__secret_prompt"})
    assert "result" in await cleared.ask("resources/read", {"uri": "customs://mem/mem://secret"})
    assert env.seen.handled == ["prompts/get secret_prompt", "resources/read mem://secret"]


async def test_call_denied_before_tools_are_known_reaches_no_upstream(env: Env) -> None:
    """A fresh gateway has not listed the upstream's tools: a call denied whatever its annotations say
    (no permit at all, or config fixing read_only false) is refused without any upstream request."""
    bad = await env.agent(BAD)
    expect(await bad.error("tools/call", {"name": "mem__echo", "arguments": {"value": "v"}}),
           -32602, "Unknown tool: mem__echo", "unknown_tool")
    good = await env.agent(GOOD)
    expect(await good.error("tools/call", {"name": "mem__wipe", "arguments": {}}),
           -32602, "Unknown tool: mem__wipe", "unknown_tool")
    assert env.seen.requests == []
    # A call that may be allowed learns the list first, then is decided on the real annotations.
    answer = await good.ask("tools/call", {"name": "mem__echo", "arguments": {"value": "v"}})
    assert answer["result"]["content"][0]["text"] == "v"
    expect(await good.error("tools/call", {"name": "mem__nothing", "arguments": {}}),
           -32602, "Unknown tool: mem__nothing", "unknown_tool")
    assert env.seen.handled == ["tools/call echo"]


@pytest.mark.parametrize("path", ["", "/mem"], ids=["aggregated", "pass-through"])
async def test_missing_prompts_answer_exactly_like_denied_ones(env: Env, path: str) -> None:
    """docs/errors.md, "Denied and unknown look the same": a prompt its upstream does not list answers as a denied
    one, whether or not its list was read before (a miss reads it again, after the decision, as tools/call does)."""
    good = await env.agent(GOOD, path)
    prefix = "" if path else "mem__"
    before = len(env.seen.requests)  # the pass-through view opens its upstream session with the agent's
    denied = await good.error("prompts/get", {"name": f"{prefix}secret_prompt"})
    expect(denied, -32602, f"Unknown prompt: {prefix}secret_prompt", "unknown_prompt")
    assert len(env.seen.requests) == before  # a denial reads no list: nothing reached the upstream
    missing = await good.error("prompts/get", {"name": f"{prefix}nope", "arguments": {"name": "a"}})
    assert missing == {**denied, "message": f"Unknown prompt: {prefix}nope"}
    assert (await good.ask("prompts/get", {"name": f"{prefix}greet", "arguments": {"name": "a"}}))["result"]
    assert "result" in await good.ask("prompts/list")
    again = await good.error("prompts/get", {"name": f"{prefix}nope"})
    assert again == missing
    assert env.seen.handled == ["prompts/get greet"]


async def test_an_upstream_whose_prompt_list_fails_is_not_asked_for_it_at_every_call(
        start_gateway: Any, permissive_policies: Path) -> None:
    """A prompt list that cannot be read leaves the upstream to answer for its prompts (as before the gateway knew
    prompt lists), and is not read again at every prompts/get: that would be a list request per call."""
    seen = Upstream()
    server = coverage_server(seen)

    async def no_list(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        seen.handled.append("prompts/list")
        raise MCPError(-32603, "prompt list unavailable")

    server._lowlevel_server.add_request_handler("prompts/list", types.PaginatedRequestParams, no_list)
    async with run_http_server(server) as url:
        gw = await start_gateway({"upstreams": [{"name": "mem", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gw.mcp) as client:
            for _ in range(3):
                assert (await client.get_prompt("mem__greet", {"name": "a"})).messages
            with pytest.raises(MCPError, match="Unknown prompt: nope"):  # the upstream's own answer
                await client.get_prompt("mem__nope", {})
    assert seen.handled == ["prompts/list", *["prompts/get greet"] * 3]
