"""`customs config check` warns about a stdio upstream whose program cannot be started as serve would start it.

Serve starts anyway and the upstream stays unavailable (its child retried with backoff), so config check used to
say OK to `command: [mcp-server-tiem]`. A warning, not an error: a check may run where the program is not installed
(a CI job, a laptop). Real CLI, real files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.cli import customs_main


def check(tmp_path: Path, upstream: dict[str, object], *, process: bool = False) -> subprocess.CompletedProcess[str]:
    """`customs config check` of a config with this one upstream: the CLI's main() in this process, or (`process`,
    ~1 s of the suite each) a real child process."""
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [{"name": "u", **upstream}]}))
    if not process:
        return customs_main("config", "check", str(path))
    return subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_a_program_not_on_path_is_a_warning(tmp_path: Path) -> None:
    done = check(tmp_path, {"command": ["no-such-mcp-server-h7x", "--stdio"]}, process=True)
    assert done.returncode == 0, done.stderr
    assert ("warning: upstreams[0].command[0]: 'no-such-mcp-server-h7x' is no program found on PATH: serve starts, "
            "and upstream u stays unavailable until it is") in done.stderr


def test_the_upstreams_own_path_and_cwd_are_where_it_is_looked_up(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "my-server"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    assert "warning" not in check(tmp_path, {"command": ["my-server"], "env": {"PATH": str(tools)}}).stderr
    assert "warning" not in check(tmp_path, {"command": ["./my-server"], "cwd": str(tools)}).stderr
    assert "warning" not in check(tmp_path, {"command": [sys.executable, "-c", "pass"]}).stderr
    script.chmod(0o644)
    done = check(tmp_path, {"command": ["./my-server"], "cwd": str(tools)})
    assert done.returncode == 0 and "upstreams[0].command[0]: './my-server' is no executable file" in done.stderr
