"""A cases file's own settings are checked like a case's, and an unnamed case is named once in its FAIL line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import REPO, customs_main

CASE = ('cases: [{principal: {id: "a", attributes: {tenant: acme}}, tool: infrastructure/restart,\n'
        '         labels: {read_only: false}, approved: true, expect: allow}]\n')


@pytest.mark.parametrize(("setting", "problem"), [
    # An empty `environment:` is null: it was read as the text "None", so a production case tested another one.
    ("environment:\n", "environment must be a string, got NoneType"),
    ("environment: [production]\n", "environment must be a string, got list"),
    # A list of @ids meant for a case: ignored, so the cases ran against whatever sat beside the file.
    (f"policies: [{REPO / 'policies'}]\n", "policies must be a string, got list"),
])
def test_a_file_setting_of_the_wrong_type_is_unusable_input(tmp_path: Path, setting: str, problem: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(setting + CASE)
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{cases}: {problem}" in done.stderr


def test_an_unnamed_case_is_named_by_its_place_once(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("environment: production\n" + CASE.replace("expect: allow", "expect: deny"))
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert done.returncode == 1
    assert f"FAIL {cases}:2: cases[0]: expected deny, got allow" in done.stdout, done.stdout
    cases.write_text(CASE.replace("expect: allow", "expect: allow, enviroment: x"))
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert f"{cases}:1: cases[0]: unknown key(s) ['enviroment']" in done.stderr, done.stderr


def test_an_empty_claim_name_in_the_files_mapping_is_unusable_input(tmp_path: Path) -> None:
    """As in the config (identity.issuers[].claims): no token has a claim named "", so the attribute was never set."""
    cases = tmp_path / "cases.yaml"
    cases.write_text('claims: {tenant: ""}\ncases: [{principal: {sub: r, tenant: acme}, tool: inventory/get_stock,\n'
                     '         labels: {read_only: true}, expect: allow}]\n')
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "claims must map attribute names to claim names" in done.stderr
