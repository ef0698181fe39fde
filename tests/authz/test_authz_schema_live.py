"""`customs policy schema --config` asks the configured upstreams (real stdio demo servers) for their tools."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support.servers import run_aiohttp

REPO = Path(__file__).resolve().parents[2]


def test_schema_from_live_upstreams(tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({
        "upstreams": [{"name": n, "command": [sys.executable, "-m", "gateway.demo.servers", n]}
                      for n in ("inventory", "payments")],
        "policies": {"dir": str(REPO / "policies")},
    }))
    proc = subprocess.run([sys.executable, "-m", "gateway", "policy", "schema", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'type payments_pay_args = { "account"?: String, "amount"?: Long, "memo"?: String };' in proc.stdout
    assert "entity Agent" in proc.stdout  # the rest of the schema is kept


def test_schema_reports_an_unreachable_upstream(tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "gone", "url": "http://127.0.0.1:9/mcp"}],
                                      "policies": {"dir": str(REPO / "policies")}}))
    proc = subprocess.run([sys.executable, "-m", "gateway", "policy", "schema", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "could not list the upstreams' tools" in proc.stderr


_MODEL_SERVER = '''
from pydantic import BaseModel
from mcp.server.mcpserver import MCPServer

class Line(BaseModel):
    sku: str
    qty: int

class Order(BaseModel):
    lines: list[Line]
    total: float
    note: str | None = None

app = MCPServer("shop")

@app.tool()
def place(order: Order, rush: bool = False) -> str:
    return "ok"

app.run("stdio")
'''


def test_schema_types_model_arguments_a_real_sdk_server_sends_by_ref(tmp_path: Path) -> None:
    """The SDK types a pydantic-model argument as `{"$ref": "#/$defs/Order"}`: it must reach `Args` typed, so a
    policy on the order's fields validates, and one reading a misspelled field does not."""
    server = tmp_path / "shop.py"
    server.write_text(_MODEL_SERVER)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "shop", "command": [sys.executable, str(server)]}],
                                      "policies": {"dir": str(policies)}}))
    schema = tmp_path / "generated.cedarschema"
    proc = subprocess.run([sys.executable, "-m", "gateway", "policy", "schema", "--config", str(config),
                           "-o", str(schema)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"order"?: { "lines"?: Set<{ "qty"?: Long, "sku"?: String }>, "note"?: String, "total"?: Long },' \
        in schema.read_text()
    (policies / "schema.cedarschema").write_text(schema.read_text())

    def validate(condition: str) -> subprocess.CompletedProcess[str]:
        (policies / "shop.cedar").write_text(
            '@id("big-orders")\nforbid (principal, action == Action::"call_tool", resource == Tool::"shop/place")\n'
            f"when {{ {condition} }};\n")
        return subprocess.run([sys.executable, "-m", "gateway", "policy", "validate", str(policies)],
                              capture_output=True, text=True, timeout=60, check=False)

    good = validate("context.args has order && context.args.order has total && context.args.order.total > 100")
    assert good.returncode == 0, good.stderr
    bad = validate("context.args has order && context.args.order.totl > 100")
    assert bad.returncode == 1 and "totl" in bad.stderr, bad.stderr


def test_every_failing_upstream_is_reported_and_none_is_left_running(tmp_path: Path) -> None:
    """One upstream failing at once (refused) while another is still starting (a child that exits at start,
    waited for up to its timeout_s) used to leave the second one's tasks to asyncio.run's teardown, which
    never finished: the command hung. Each upstream is now waited for and every failure listed."""
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({
        "upstreams": [{"name": "gone", "url": "http://127.0.0.1:9/mcp"},
                      {"name": "dies", "command": [sys.executable, "-c", "raise SystemExit(3)"], "timeout_s": 2}],
        "policies": {"dir": str(REPO / "policies")}}))
    proc = subprocess.run([sys.executable, "-m", "gateway", "policy", "schema", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "could not list the upstreams' tools" in proc.stderr
    assert "  gone: upstream_unavailable" in proc.stderr and "  dies: upstream_unavailable" in proc.stderr


def _handwritten_upstream(tools_list: Callable[[int], dict[str, Any]], key: str | None = None) -> web.Application:
    """A minimal streamable-HTTP MCP upstream (JSON answers) whose tools/list answer is `tools_list(id)`;
    with `key`, every request without `X-Api-Key: <key>` is refused 401."""
    async def mcp(request: web.Request) -> web.Response:
        if key is not None and request.headers.get("X-Api-Key") != key:
            return web.Response(status=401)
        message = await request.json()
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "hand", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})
        return web.json_response({"jsonrpc": "2.0", **tools_list(message["id"])})

    app = web.Application()
    app.router.add_post("/mcp", mcp)
    return app


async def _schema_cli(tmp_path: Path, upstream: dict[str, Any],
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "customs.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [upstream], "policies": {"dir": str(REPO / "policies")}}))
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "policy", "schema", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})})


async def test_an_upstream_that_answers_tools_list_with_an_error_is_reported_not_an_empty_list(
        tmp_path: Path) -> None:
    """A JSON-RPC error for tools/list used to read as "no tools": exit 0 with an Args block missing that
    upstream's arguments, so policies on them failed validation for no reason anyone was told."""
    app = _handwritten_upstream(lambda i: {"id": i, "error": {"code": -32601, "message": "no tools here"}})
    async with run_aiohttp(app) as base:
        proc = await _schema_cli(tmp_path, {"name": "hand", "url": f"{base}/mcp"})
    assert proc.returncode == 2, proc.stdout
    assert "  hand: tools/list answered error -32601: no tools here" in proc.stderr, proc.stderr


async def test_a_malformed_live_tool_is_named_not_a_traceback(tmp_path: Path) -> None:
    """What --tools-json refuses by name (a tool without a string name, properties that are not a mapping)
    crashed with a traceback (exit 1) when an upstream listed it live."""
    tools = [{"name": "ok", "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}}}},
             {"name": "bad", "inputSchema": {"type": "object", "properties": ["a"]}}]
    app = _handwritten_upstream(lambda i: {"id": i, "result": {"tools": tools}})
    async with run_aiohttp(app) as base:
        proc = await _schema_cli(tmp_path, {"name": "hand", "url": f"{base}/mcp"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "hand: tools[1] (bad): inputSchema.properties must map argument names to schemas" in proc.stderr
    app = _handwritten_upstream(lambda i: {"id": i, "result": []})
    async with run_aiohttp(app) as base:
        proc = await _schema_cli(tmp_path, {"name": "hand", "url": f"{base}/mcp"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "  hand: tools/list answered no result object" in proc.stderr, proc.stderr


async def test_an_upstream_with_a_static_key_is_asked_with_it(tmp_path: Path) -> None:
    """The gateway lists a `static` upstream with its key (pin_watch); the CLI sent none, so such an
    upstream always answered 401 and could not be typed from --config."""
    tools = [{"name": "search", "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    app = _handwritten_upstream(lambda i: {"id": i, "result": {"tools": tools}}, key="k-1")
    upstream = {"name": "search", "credentials": {"mode": "static", "header": "X-Api-Key", "value_env": "SEARCH_KEY"}}
    async with run_aiohttp(app) as base:
        proc = await _schema_cli(tmp_path, {**upstream, "url": f"{base}/mcp"}, env={"SEARCH_KEY": "k-1"})
        assert proc.returncode == 0, proc.stderr
        assert 'type search_search_args = { "q"?: String };' in proc.stdout
        missing = await _schema_cli(tmp_path, {**upstream, "url": f"{base}/mcp"}, env={"SEARCH_KEY": ""})
        minted = await _schema_cli(tmp_path, {"name": "search", "url": f"{base}/mcp",
                                              "credentials": {"mode": "minted", "audience": f"{base}/mcp"}})
    assert minted.returncode == 2 and "HTTP 401" in minted.stderr, minted.stderr
    assert "credentials mode minted: listed without a credential" in minted.stderr
    assert "--tools-json" in minted.stderr
    assert missing.returncode == 2, missing.stdout
    assert "  search: credential_unavailable" in missing.stderr and "SEARCH_KEY" in missing.stderr, missing.stderr
    assert "k-1" not in missing.stderr + proc.stderr
