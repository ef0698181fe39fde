"""`customs ... | head`: a reader that goes away ends the command quietly, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_output_into_a_closed_pipe_is_not_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader ever: the first write fails with EPIPE, deterministically
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "policy", "explain", "--policies", str(REPO / "policies"),
             "--principal-claims", '{"sub": "agent-1", "tenant": "acme"}', "--tool", "inventory/get_stock"],
            cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141
