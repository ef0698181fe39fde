"""A `decision_log.path` that lies below a file (or is a directory) can never be opened for appending: `serve`
refuses to start on it (exit 2, naming the key), but `customs config check` said OK, so a config that check
passed was one serve refused. Reading shows it without a write, so config check (and a SIGHUP reload, which
refuses what config check refuses) now report serve's own line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from tests.conftest import REPO

UPSTREAM = {"name": "ok", "url": "http://127.0.0.1:1/mcp"}


def _write(tmp_path: Path, log_path: str) -> Path:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [UPSTREAM], "decision_log": {"path": log_path}}))
    return path


def test_config_check_reports_a_decision_log_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    path = _write(tmp_path, "afile/logs/decisions.jsonl")  # relative to the config file, as serve reads it
    code = main(["config", "check", str(path)])
    _out, err = capsys.readouterr()
    target = tmp_path / "afile" / "logs" / "decisions.jsonl"
    assert code == 2, err
    assert err.splitlines() == [f"{path}: invalid configuration",
                                f"  decision_log.path: {target}: cannot open it for appending "
                                f"(Not a directory: {tmp_path / 'afile'})"]


def test_config_check_reports_a_decision_log_that_is_a_directory(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "logs").mkdir()
    path = _write(tmp_path, "logs")
    code = main(["config", "check", str(path)])
    _out, err = capsys.readouterr()
    assert code == 2, err
    assert f"  decision_log.path: {tmp_path / 'logs'}: cannot open it for appending (Is a directory: " \
           f"{tmp_path / 'logs'})" in err.splitlines(), err


def test_config_check_passes_a_decision_log_in_a_directory_serve_creates(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "existing.jsonl").write_text("")
    for log_path in ("new/dirs/decisions.jsonl", "existing.jsonl"):
        code = main(["config", "check", str(_write(tmp_path, log_path))])
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), err
        assert "OK" in out
    assert not (tmp_path / "new").exists()  # config check writes nothing


def test_serve_refuses_it_with_the_same_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = _write(tmp_path, "afile/decisions.jsonl")
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert (f"decision_log.path: {tmp_path / 'afile' / 'decisions.jsonl'}: cannot open it for appending "
            f"(Not a directory: {tmp_path / 'afile'})") in done.stderr, done.stderr
