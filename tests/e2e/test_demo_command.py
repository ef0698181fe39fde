"""`customs demo`, the first thing a new user runs: allow, deny and hold, then an approved call runs once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def test_demo_walkthrough_shows_allow_deny_hold_and_release(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--exit-after-walkthrough", "--port", str(free_port()),
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "OK: widget: 42 in stock" in out
    assert "DENIED: Unknown tool: inventory__get_stock" in out
    assert "HELD: Call is waiting for approval" in out
    assert "approve → HTTP 200" in out
    assert "OK: paid 12500.0 to acme-supplies" in out
    decisions = (tmp_path / "demo" / "decisions.jsonl").read_text()
    assert decisions.count('"tool":"pay"') >= 2 and '"approval_required"' in decisions
