"""`customs config check` and `customs policy ...` on files they cannot use: a message and exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from authz_helpers import REPO, SHIPPED

NOT_UTF8 = b"\xff\xfe\x00 not text"


def customs(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "binary.yaml"
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize("argv", [
    ("config", "check", "{f}"),
    ("policy", "test", "{f}"),
    ("policy", "replay", "--log", "{f}", "--policies", str(SHIPPED)),
    ("policy", "explain", "--policies", str(SHIPPED), "--principal-claims", "@{f}", "--tool", "a/b"),
    ("policy", "schema", "--tools-json", "{f}", "--policies", str(SHIPPED)),
])
def test_a_file_that_is_not_utf8_is_named_not_a_traceback(binary: Path, argv: tuple[str, ...]) -> None:
    result = customs(*(a.format(f=binary) for a in argv))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{binary.name}" in result.stderr and "not UTF-8" in result.stderr


def test_schema_output_into_a_directory_is_an_error(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text("{}")
    result = customs("policy", "schema", "--tools-json", tools, "--policies", SHIPPED, "--output", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output: cannot write {tmp_path}" in result.stderr


def test_bad_case_yaml_names_line_and_an_empty_directory_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases: [\n")
    result = customs("policy", "test", bad)
    assert result.returncode == 2 and "line 2, column 1: invalid YAML" in result.stderr
    assert "<unicode string>" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = customs("policy", "test", empty)
    assert result.returncode == 2 and f"no cases found in {empty}" in result.stderr
