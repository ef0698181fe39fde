"""Fixtures for the MCP conformance tests: the installed CLI, the Python target server, the direct run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conformance_runner import Checks, missing_tools, run_conformance_checks, start_target


@pytest.fixture(scope="session")
def conformance_cli() -> None:
    """Skip (locally) when Node 22 / the CLI are missing; in CI the installer put them there, so fail."""
    reason = missing_tools()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"MCP conformance suite unavailable in CI: {reason}")
    pytest.skip(f"MCP conformance suite unavailable: {reason}")


@pytest.fixture(scope="module")
def conformance_target(conformance_cli: None) -> Iterator[str]:
    """tests/conformance/target_server.py running on a free port; its streamable-HTTP URL."""
    with start_target() as url:
        yield url


@pytest.fixture(scope="module")
def direct_checks(conformance_target: str) -> Checks:
    """Every server scenario of the suite, run directly against the target (once per module)."""
    return run_conformance_checks(conformance_target)
