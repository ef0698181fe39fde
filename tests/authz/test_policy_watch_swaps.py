"""The watcher sees a policy directory swapped under the same path, whatever the new files' times and sizes.

A common deploy unpacks a release beside the live one and swaps a symlink (`ln -sfn releases/v2 policies`). Build
tools that make reproducible artefacts give every file the same time (Nix stores files at mtime 1, Bazel and
`SOURCE_DATE_EPOCH` builds at a fixed one), and a one-character change (`> 3` to `> 2`) keeps a file's size: the
watcher compared (path, mtime, size) only, so such a release was never loaded until a SIGHUP or a restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from authz_helpers import TOOLS, agent

from gateway.authz.engine import PolicyEngine
from gateway.config.model import PoliciesConfig
from gateway.context import Actor

FIXED_NS = 1_000_000_000  # mtime 1 s after the epoch, as the Nix store keeps every file


def _release(source: Path, target: Path, depth: str) -> Path:
    shutil.copytree(source, target)
    guards = target / "guards.cedar"
    guards.write_text(guards.read_text().replace("context.chain_depth > 3", f"context.chain_depth > {depth}"))
    for path in target.iterdir():
        os.utime(path, ns=(FIXED_NS, FIXED_NS))
    return target


async def test_a_symlink_swapped_to_a_release_of_equal_times_and_sizes_is_reloaded(policy_dir: Path,
                                                                                   tmp_path: Path) -> None:
    v1 = _release(policy_dir, tmp_path / "v1", "3")
    v2 = _release(policy_dir, tmp_path / "v2", "2")
    assert (v1 / "guards.cedar").stat().st_size == (v2 / "guards.cedar").stat().st_size
    live = tmp_path / "live"
    live.symlink_to(v1)
    reloaded = asyncio.Event()
    engine = PolicyEngine(PoliciesConfig(dir=live), "dev", poll_s=0.05,
                          on_reload=lambda ok, message: reloaded.set())
    await engine.start()
    try:
        before = engine.version
        staged = tmp_path / "live.new"
        staged.symlink_to(v2)
        os.replace(staged, live)  # atomic, as `ln -sfn` followed by `mv -T` does it
        await asyncio.wait_for(reloaded.wait(), timeout=10)
        assert engine.version != before and engine.last_error is None
        chain = tuple(Actor(f"spiffe://customs.demo/agent/a{i}", {"tenant": "acme"}) for i in range(3))
        reader = agent("spiffe://customs.demo/agent/reader", chain=chain)
        decision = engine.decide(reader, "call_tool", TOOLS["inventory/get_stock"], None)
        assert decision.outcome == "deny" and "delegation-depth-limit" in decision.policy_ids
    finally:
        await engine.close()
