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
