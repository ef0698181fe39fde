"""Stopping the real processes tests start: SIGTERM, then SIGKILL if it has not exited within a grace period."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """Terminate `proc` and reap it; kill it when it has not exited `grace_s` after the SIGTERM."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
