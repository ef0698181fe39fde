"""`customs policy schema --config` asks the configured upstreams (real stdio demo servers) for their tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

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
