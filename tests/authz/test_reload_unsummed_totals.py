"""A hot reload warns, as `config check` and `serve` start-up do, about a forbid guarded by a task total
(`context.task.totals.X`) that no `upstreams[].tools.<tool>.sum_args` sums: the total is never set, so the
forbid never fires. It used to warn at start-up only, so a cap added live (file change or SIGHUP) failed
silently (docs/policies.md). On a real gateway process, reading its log."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any

from tests.authz.conftest import SHIPPED

CAP = ('@id("{id}")\nforbid (principal, action == Action::"call_tool", resource)\n'
       "when {{ context has task && context.task has totals && context.task.totals has quantity && "
       "context.task.totals.quantity > 500 }};\n")


def _warning(where: str, policy: str) -> str:
    return (f"{where}: forbid '{policy}' reads context.task.totals.quantity, but no upstreams[].tools.<tool>.sum_args "
            "sums 'quantity': the total is never set, so it never fires")


async def _logged(log: Path, text: str, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while text not in log.read_text():
        assert asyncio.get_running_loop().time() < deadline, f"not logged within {within_s} s: {text}"
        await asyncio.sleep(0.1)  # polling the log file, bounded by the deadline


def _policies(target: Path) -> Path:
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("tests"))
    schema = target / "schema.cedarschema"
    schema.write_text(schema.read_text().replace('totals?: { "amount"?: Long }',
                                                 'totals?: { "amount"?: Long, "quantity"?: Long }'))
    return target


async def test_a_reload_warns_about_a_forbid_on_a_total_nothing_sums(tmp_path: Path, spawn_gateway: Any) -> None:
    enforced, shadow = _policies(tmp_path / "pol"), _policies(tmp_path / "shadow")
    gw = await spawn_gateway({"upstreams": [{"name": "ok", "url": "http://127.0.0.1:1/mcp",
                                             "tools": {"pay": {"sum_args": ["amount"]}}}],
                              "policies": {"dir": str(enforced), "shadow_dir": str(shadow)}})
    assert "never fires" not in gw.log_path.read_text()
    (enforced / "caps.cedar").write_text(CAP.format(id="restock-cap"))  # seen by the watcher
    await _logged(gw.log_path, _warning("policies.dir", "restock-cap"))
    (shadow / "caps.cedar").write_text(CAP.format(id="shadow-cap"))
    await _logged(gw.log_path, _warning("policies.shadow_dir", "shadow-cap"))
    before = gw.log_path.read_text().count(_warning("policies.dir", "restock-cap"))
    gw.proc.send_signal(signal.SIGHUP)  # a SIGHUP reload warns again
    await _logged(gw.log_path, "SIGHUP: policies reloaded")
    assert gw.log_path.read_text().count(_warning("policies.dir", "restock-cap")) == before + 1
