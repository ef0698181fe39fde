"""The shadow policy set reloads on its own, on a real gateway process: whatever state the enforced set is in,
a shadow change is loaded or refused and reported as the shadow set's (docs/policies.md, "Reloading")."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ANON, one_shape_policies, poll

pytestmark = pytest.mark.asyncio
BROKEN = "permit (principal, action, resource) when { nope };\n"
STRICTER = '@id("no-lookup")\nforbid (principal, action == Action::"call_tool", resource == Tool::"rec/lookup");\n'


def _config(enforced: Path, shadow: Path, log_path: Path, *, watch: bool) -> dict[str, Any]:
    return {"upstreams": [{"name": "rec", "url": "http://127.0.0.1:9/mcp"}], "identity": ANON,
            "policies": {"dir": str(enforced), "shadow_dir": str(shadow), "watch": watch},
            "decision_log": {"path": str(log_path)}}


async def _detail(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/readyz") as resp:
        detail: dict[str, Any] = (await resp.json())["checks"]["policies"]["detail"]
        return detail


async def _reloads(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    """(policy set, outcome) -> count of customs.policy.reloads."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("customs_policy_reloads_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[labels["customs_policy_set"], labels["customs_outcome"]] = float(line.rsplit(" ", 1)[1])
    return out


def _reload_events(log_path: Path) -> list[dict[str, Any]]:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("type") == "policy_reload"]


async def test_shadow_changes_load_and_report_while_the_enforced_set_is_broken(
        spawn_gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    enforced, shadow = one_shape_policies(tmp_path / "enforced"), one_shape_policies(tmp_path / "shadow")
    log_path = tmp_path / "decisions.jsonl"
    gw = await spawn_gateway(_config(enforced, shadow, log_path, watch=True))
    first_shadow = (await _detail(http, gw.url))["shadow"]["version"]

    (enforced / "broken.cedar").write_text(BROKEN)
    await poll(lambda: "policy reload failed" in gw.log(), what="the enforced set's failed reload")
    (shadow / "bad.cedar").write_text(BROKEN)
    await poll(lambda: "shadow policy reload failed" in gw.log(), what="the shadow set's failed reload")
    detail = await _detail(http, gw.url)
    assert "bad.cedar" in detail["shadow"]["error"] and "bad.cedar" not in detail["last_error"], detail
    assert detail["reload_failures"] == 1 and detail["shadow"]["reload_failures"] == 1, detail

    loads = gw.log().count("shadow policies sha256")  # start-up logs the shadow set's first load too
    (shadow / "bad.cedar").write_text(STRICTER)  # fixed: loads although the enforced set is still broken
    await poll(lambda: gw.log().count("shadow policies sha256") > loads, what="the shadow set's reload")
    detail = await _detail(http, gw.url)
    assert detail["shadow"]["error"] is None and detail["shadow"]["version"] != first_shadow, detail
    assert "broken.cedar" in detail["last_error"] and detail["reload_failures"] == 1, detail
    assert await _reloads(http, gw.url) == {("enforced", "error"): 1, ("shadow", "error"): 1, ("shadow", "ok"): 1}
    await poll(lambda: len(_reload_events(log_path)) == 3, what="three policy_reload records")
    events = _reload_events(log_path)
    assert [(e["policy_set"], e["outcome"]) for e in events] == [
        ("enforced", "error"), ("shadow", "error"), ("shadow", "ok")]
    assert "bad.cedar" in events[1]["error"] and events[2]["policy_version"] == detail["shadow"]["version"]


async def test_a_shadow_set_failing_on_sighup_is_reported_as_a_failure_of_the_shadow_set(
        spawn_gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    enforced, shadow = one_shape_policies(tmp_path / "enforced"), one_shape_policies(tmp_path / "shadow")
    log_path = tmp_path / "decisions.jsonl"
    gw = await spawn_gateway(_config(enforced, shadow, log_path, watch=False))
    (shadow / "bad.cedar").write_text(BROKEN)
    gw.proc.send_signal(signal.SIGHUP)
    await poll(lambda: "SIGHUP: policies reloaded" in gw.log(), what="the reload")
    assert await _reloads(http, gw.url) == {("enforced", "ok"): 1, ("shadow", "error"): 1}
    await poll(lambda: len(_reload_events(log_path)) == 2, what="two policy_reload records")
    ok, failed = _reload_events(log_path)
    assert (ok["policy_set"], ok["outcome"], ok["error"]) == ("enforced", "ok", None)
    assert (failed["policy_set"], failed["outcome"]) == ("shadow", "error") and "bad.cedar" in failed["error"]
    detail = await _detail(http, gw.url)
    assert detail["last_error"] is None and "bad.cedar" in detail["shadow"]["error"], detail
