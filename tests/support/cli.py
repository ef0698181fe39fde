"""Run the `customs` command line as a child process, as a user runs it, and give back what it printed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def customs(*argv: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`customs ARGV...` run to its end (60 s at most); exit code, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


async def customs_async(*argv: str, token: str | None = None, check: bool = False) -> tuple[int, str, str]:
    """`customs ARGV...` from async tests (the loop keeps serving the gateway it talks to): exit code, stdout,
    stderr; `check` fails the test, showing stderr, unless it exits 0. The token, if given, comes from
    CUSTOMS_TOKEN; the caller's CUSTOMS_TOKEN and CUSTOMS_URL never do."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMS_TOKEN", "CUSTOMS_URL")}
    if token is not None:
        env["CUSTOMS_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *argv, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    assert proc.returncode == 0 or not check, err.decode()
    return proc.returncode, out.decode(), err.decode()
