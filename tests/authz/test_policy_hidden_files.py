"""Hidden files in a policy directory are no policies: editors and archivers leave them beside the real ones.

Emacs keeps a lock `.#tools.cedar` (a symlink to `user@host.pid`, which does not exist) beside a file with unsaved
changes, and a tarball made on macOS carries `._tools.cedar` (AppleDouble metadata, binary). Both end in `.cedar`:
read as policies, a directory being edited failed `customs policy validate`, start-up and every reload.
"""

from __future__ import annotations

import os
from pathlib import Path

from authz_helpers import TOOLS, agent

from gateway.authz.engine import PolicyEngine
from gateway.authz.policyset import fingerprint, load_policies
from gateway.config.model import PoliciesConfig
from tests.support.cli import customs_main

READER = agent("spiffe://customs.demo/agent/reader", tenant="acme")
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\xff\xfe"


def _litter(directory: Path) -> None:
    os.symlink("alice@laptop.4242:1700000000", directory / ".#tools.cedar")  # dangling, as Emacs makes it
    (directory / "._tools.cedar").write_bytes(APPLEDOUBLE)
    (directory / ".draft.cedar").write_text("permit (principal, action, resource) when {")


def test_hidden_files_are_not_read_as_policies(policy_dir: Path) -> None:
    clean = load_policies(policy_dir)
    _litter(policy_dir)
    loaded = load_policies(policy_dir)
    assert loaded.version == clean.version
    assert not any(Path(f).name.startswith(".") for f in loaded.files)


def test_validate_passes_beside_an_editor_lock_file(policy_dir: Path) -> None:
    _litter(policy_dir)
    done = customs_main("policy", "validate", policy_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "13 policies in 3 file(s)" in done.stdout


async def test_a_lock_file_is_no_change_and_a_reload_beside_it_succeeds(policy_dir: Path) -> None:
    engine = PolicyEngine(PoliciesConfig(dir=policy_dir, watch=False), "dev")
    engine.load_sync()
    before = fingerprint(policy_dir)
    _litter(policy_dir)
    assert fingerprint(policy_dir) == before  # the watcher sees no change to reload for
    assert await engine.reload()  # SIGHUP while a file is open in an editor
    assert engine.last_error is None
    decision = engine.decide(READER, "call_tool", TOOLS["inventory/get_stock"], None)
    assert decision.outcome == "allow"


def test_a_directory_of_hidden_files_alone_has_no_policies(tmp_path: Path, policy_dir: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "schema.cedarschema").write_bytes((policy_dir / "schema.cedarschema").read_bytes())
    (only / ".tools.cedar").write_bytes((policy_dir / "tools.cedar").read_bytes())
    done = customs_main("policy", "validate", only)
    assert done.returncode == 1
    assert "no *.cedar policy files" in done.stdout + done.stderr


def test_policy_test_skips_hidden_case_files_in_a_directory(tmp_path: Path, policy_dir: Path) -> None:
    cases = policy_dir / "tests"
    cases.mkdir()
    (cases / "reads.yaml").write_text(
        'cases: [{principal: {id: "r", attributes: {tenant: acme}}, tool: inventory/get_stock,\n'
        '         labels: {read_only: true}, expect: allow}]\n')
    (cases / "._reads.yaml").write_bytes(APPLEDOUBLE)
    done = customs_main("policy", "test", cases)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout
