"""`customs` imports only what the command it runs needs: no aiohttp, Cedar, Redis or OpenTelemetry for
`version`, `--help` or an approvals request (they took most of a second of every start; docs/performance.md).

Pinned by the modules the real command imports (`python -X importtime -m gateway ...`), not by a timing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port

HEAVY = frozenset({"aiohttp", "cedarpy", "redis", "opentelemetry", "mcp", "pydantic", "yaml"})


def imported(*argv: str) -> tuple[int, set[str]]:
    """The exit code of `customs ARGV...` and the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "gateway", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    assert "gateway" in names, result.stderr  # the parse above read the import log
    return result.returncode, names


@pytest.mark.parametrize("argv", [("version",), ("--help",), ("approvals", "list", "--help"),
                                  ("policy", "explain", "--help"), ("tools", "approve", "--help")])
def test_version_and_help_import_no_heavy_package(argv: tuple[str, ...]) -> None:
    code, names = imported(*argv)
    assert code == 0
    assert not names & HEAVY, sorted(names & HEAVY)


def test_an_approvals_request_imports_no_heavy_package() -> None:
    code, names = imported("approvals", "list", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t",
                           "--timeout", "5")
    assert code == 3  # nothing listens there: "cannot reach the gateway"
    assert not names & HEAVY, sorted(names & HEAVY)


def test_policy_validate_imports_cedar_but_not_the_gateway_runtime() -> None:
    code, names = imported("policy", "validate", str(REPO / "policies"))
    assert code == 0
    assert names & HEAVY == {"cedarpy"}
