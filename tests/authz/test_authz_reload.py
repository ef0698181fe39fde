"""Loading, reloading, watching and shadow policies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from authz_helpers import TOOLS, agent, call

from gateway.authz.engine import PolicyEngine
from gateway.authz.policyset import PolicyLoadError, load_policies
from gateway.config.model import PoliciesConfig

READER = agent("spiffe://customs.demo/agent/reader")
DENY_READS = '@id("freeze")\nforbid (principal, action == Action::"call_tool", resource);\n'


def test_start_up_refuses_invalid_policies_listing_every_problem(policy_dir: Path) -> None:
    (policy_dir / "broken.cedar").write_text("permit (principal, action, resource) when {")
    (policy_dir / "noid.cedar").write_text("permit (principal, action, resource);")
    (policy_dir / "typo.cedar").write_text('@id("typo")\npermit (principal, action, resource) '
                                           'when { resource.sensitivty == "x" };')
    with pytest.raises(PolicyLoadError) as exc:
        PolicyEngine(PoliciesConfig(dir=policy_dir), "dev").load_sync()
    text = "\n".join(exc.value.problems)
    assert "broken.cedar:1: syntax error" in text
    assert "noid.cedar:1: policy #1 has no @id" in text


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda d: (d / "schema.cedarschema").unlink(), "missing schema"),
    (lambda d: (d / "schema.cedarschema").write_text("entity ;"), "invalid schema"),
    (lambda d: [p.unlink() for p in d.glob("*.cedar")], "no *.cedar policy files"),
    (lambda d: (d / "dup.cedar").write_text('@id("reads-allowed")\npermit (principal, action, resource);'),
     'duplicate @id("reads-allowed")'),
    (lambda d: (d / "typo.cedar").write_text('@id("typo")\npermit (principal, action, resource) '
                                             'when { resource.sensitivty == "x" };'), "policy 'typo'"),
    (lambda d: (d / "tpl.cedar").write_text('@id("t")\npermit (principal == ?principal, action, resource);'),
     "templates"),
    # An @id names the policy in decisions, logs and the reports of test and replay, one line per entry: a blank
    # one named nothing a reader could see, and a newline in one split a report line in two.
    (lambda d: (d / "blank.cedar").write_text('@id("  ")\nforbid (principal, action, resource);'),
     'blank.cedar:1: policy #1: @id("  ") must be printable text, not blank'),
    (lambda d: (d / "nl.cedar").write_text('@id("no\\nreads")\nforbid (principal, action, resource);'),
     'nl.cedar:1: policy #1: @id("no\\nreads") must be printable text, not blank'),
])
def test_each_load_problem_is_named(policy_dir: Path, setup: Callable[[Path], object], expected: str) -> None:
    setup(policy_dir)
    with pytest.raises(PolicyLoadError) as exc:
        load_policies(policy_dir)
    assert any(expected in p for p in exc.value.problems), exc.value.problems


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="not a directory"):
        load_policies(tmp_path / "nope")


def test_version_is_a_hash_of_the_texts(policy_dir: Path) -> None:
    first = load_policies(policy_dir).version
    assert first == load_policies(policy_dir).version and first.startswith("sha256:")
    (policy_dir / "extra.cedar").write_text(DENY_READS)
    assert load_policies(policy_dir).version != first


async def test_reload_with_a_broken_file_keeps_the_last_good_set(policy_dir: Path) -> None:
    reports: list[tuple[bool, str]] = []
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, watch=False), "dev",
                          on_reload=lambda ok, msg: reports.append((ok, msg)))
    engine.load_sync()
    good = engine.version
    (policy_dir / "broken.cedar").write_text("forbid (principal, action")
    assert await engine.reload() is False
    status = engine.status()
    assert status["loaded"] is True and status["version"] == good and status["reload_failures"] == 1
    assert "broken.cedar" in status["last_error"]
    assert reports and reports[-1][0] is False and "broken.cedar" in reports[-1][1]
    decision = engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], call(READER, "inventory/get_stock"))
    assert decision.outcome == "allow" and decision.policy_version == good
    (policy_dir / "broken.cedar").write_text(DENY_READS)
    assert await engine.reload() is True
    assert engine.status()["last_error"] is None and engine.version != good and reports[-1][0] is True
    assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).outcome == "deny"


async def test_watcher_picks_up_a_change(policy_dir: Path) -> None:
    changed = asyncio.Event()
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir), "dev", poll_s=0.05,
                          on_reload=lambda ok, msg: changed.set())
    await engine.start()
    try:
        before = engine.version
        (policy_dir / "freeze.cedar").write_text(DENY_READS)
        await asyncio.wait_for(changed.wait(), timeout=10)
        assert engine.version != before
        assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).policy_ids == ("freeze",)
    finally:
        await engine.close()
    assert engine._watcher is None


async def test_watcher_reports_a_broken_change_once(policy_dir: Path) -> None:
    reports: list[bool] = []
    failed = asyncio.Event()

    def on_reload(ok: bool, message: str) -> None:
        reports.append(ok)
        failed.set()

    engine = PolicyEngine(PoliciesConfig(dir=policy_dir), "dev", poll_s=0.02, on_reload=on_reload)
    await engine.start()
    try:
        (policy_dir / "broken.cedar").write_text("permit (")
        await asyncio.wait_for(failed.wait(), timeout=10)
        for _ in range(10):  # several more polls of the same broken files must not reload again
            await asyncio.sleep(0.02)
        assert reports == [False] and engine.loaded
    finally:
        await engine.close()


async def test_watcher_waits_for_files_to_hold_still_before_loading_them(policy_dir: Path) -> None:
    """A file rewritten in place is empty (or half there) between its truncation and its last write, and a
    deploy writes one file after another: loaded at such a moment, a set could be neither the old nor the new
    one, here without its forbid, until the next poll. A change is loaded once a poll sees it unchanged."""
    (policy_dir / "freeze.cedar").write_text(DENY_READS)
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir), "dev", poll_s=3600)  # polls driven by the test
    engine.load_sync()
    frozen = engine.version
    (policy_dir / "freeze.cedar").write_text("")  # truncated: the writer has not written yet
    await engine._poll_once()
    assert engine.version == frozen  # still writing, as far as one poll can tell: the forbid stays
    (policy_dir / "freeze.cedar").write_text(DENY_READS + "// frozen for the audit\n")
    await engine._poll_once()
    assert engine.version == frozen
    assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).policy_ids == ("freeze",)
    await engine._poll_once()  # unchanged since the last poll: written
    assert engine.version != frozen and engine.reloads == 1
    assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).policy_ids == ("freeze",)
    (policy_dir / "freeze.cedar").write_text("")  # an empty file that stays so is a change like any other
    await engine._poll_once()
    await engine._poll_once()
    assert engine.reloads == 2
    assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).outcome != "deny"


async def test_start_loads_when_not_loaded_and_fails_loudly(policy_dir: Path, tmp_path: Path) -> None:
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, watch=False), "dev")
    await engine.start()
    assert engine.loaded and engine._watcher is None
    await engine.close()
    with pytest.raises(PolicyLoadError):
        await PolicyEngine(PoliciesConfig(dir=tmp_path / "missing"), "dev").start()


def test_shadow_decides_alongside_and_counts_disagreements(policy_dir: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for path in policy_dir.iterdir():
        (shadow / path.name).write_text(path.read_text())
    (shadow / "freeze.cedar").write_text(DENY_READS)
    seen: list[tuple[str, str]] = []
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, shadow_dir=shadow), "dev",
                          on_shadow_disagreement=lambda enforced, other: seen.append((enforced, other)))
    engine.load_sync()
    read_call, secret_call = call(READER, "inventory/get_stock"), call(READER, "hr/salaries")
    read = engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], read_call)
    assert (read.outcome, read.shadow_outcome) == ("allow", "deny")
    secret = engine.decide(READER, "call_tool", TOOLS["hr/salaries"], secret_call)
    assert (secret.outcome, secret.shadow_outcome) == ("deny", "deny")
    # Counted once per call, with the decision the call keeps (the authorize stage hands it over).
    assert engine.shadow_disagreements == 0
    read_call.decision, secret_call.decision = read, secret
    for ctx in (read_call, secret_call, read_call):
        engine.count_shadow(ctx)
    assert seen == [("allow", "deny")] and engine.shadow_disagreements == 1
    assert engine.status()["shadow"]["disagreements"] == 1


def test_a_broken_shadow_set_does_not_stop_enforcement(policy_dir: Path, tmp_path: Path) -> None:
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, shadow_dir=tmp_path / "missing"), "dev")
    engine.load_sync()
    decision = engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None)
    assert decision.outcome == "allow" and decision.shadow_outcome is None
    assert "not a directory" in engine.status()["shadow"]["error"]


async def test_a_set_of_no_policies_has_its_version_everywhere(policy_dir: Path, tmp_path: Path) -> None:
    """A directory whose files hold no policy loads (and denies everything); its version is still a version:
    LoadedPolicies has a length, so a truthiness test read an empty set as no set at all."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "schema.cedarschema").write_text((policy_dir / "schema.cedarschema").read_text())
    (shadow / "none.cedar").write_text("// nothing is permitted\n")
    reports: list[tuple[bool, str]] = []
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, shadow_dir=shadow, watch=False), "dev",
                          on_reload=lambda ok, msg: reports.append((ok, msg)))
    engine.load_sync()
    assert engine.shadow_version == load_policies(shadow).version
    for path in policy_dir.glob("*.cedar"):
        path.write_text("// emptied\n")
    assert await engine.reload() is True
    empty = load_policies(policy_dir).version
    assert engine.version == empty and engine.status()["version"] == empty
    assert engine.status()["shadow"]["version"] == engine.shadow_version
    assert reports[-1][1].endswith(f"-> {empty} (0 policies)")
    (policy_dir / "none.cedar").write_text(DENY_READS)
    assert await engine.reload() is True
    assert reports[-1][1].startswith(f"policies {empty} -> ")
    assert engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None).outcome == "deny"


def test_start_up_logs_the_shadow_set_it_loaded_as_the_enforced_one(policy_dir: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The enforced set's start-up load was logged (version, count) and the shadow set's was not: an operator
    could not tell from the log which shadow version a gateway compared against."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for path in policy_dir.iterdir():
        (shadow / path.name).write_text(path.read_text())
    (shadow / "freeze.cedar").write_text(DENY_READS)
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, shadow_dir=shadow, watch=False), "dev")
    with caplog.at_level(logging.INFO, logger="customs.authz"):
        engine.load_sync()
    loaded = load_policies(shadow)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "customs.authz"]
    assert (logging.INFO, f"shadow policies {loaded.version} loaded from {shadow} ({len(loaded)} policies)") \
        in lines, lines
