"""SIGHUP re-reads of the config file, as operators see them without reading the log.

Each re-read is counted (`customs.config.reloads`, `customs.outcome` ok | error) and recorded (a `config_reload`
decision-log event); a refused one is named in /readyz (`checks.config.detail.last_error`: the file, when, every
problem) until a later one is accepted. A refusal never makes the gateway not ready: it keeps serving the
running config, which was valid when it was read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.telemetry.observability import Observability


class ConfigReloads:
    def __init__(self, obs: Observability) -> None:
        self._obs = obs
        self.reloads = 0  # accepted and refused
        self.reload_failures = 0
        self.last_reload_at: float | None = None  # Unix time
        self.last_error: dict[str, Any] | None = None  # the refusal, until a reload is accepted

    def accepted(self, path: Path, restart_needed: list[str]) -> None:
        """`path` validated; `restart_needed`: the sections it changed that apply only after a restart."""
        self._counted()
        self.last_error = None
        self._obs.metrics.config_reload(True)
        self._obs.event("config_reload", file=str(path), outcome="ok", restart_needed=restart_needed)

    def refused(self, path: Path, problems: list[str]) -> None:
        """`path` is invalid (`problems`, as `customs config check` lists them): nothing changed."""
        self._counted()
        self.reload_failures += 1
        self.last_error = {"file": str(path), "at": self.last_reload_at, "problems": list(problems)}
        self._obs.metrics.config_reload(False)
        self._obs.event("config_reload", file=str(path), outcome="error", problems=list(problems))

    def _counted(self) -> None:
        self.reloads += 1
        self.last_reload_at = time.time()

    def status(self) -> dict[str, Any]:
        return {"reloads": self.reloads, "reload_failures": self.reload_failures,
                "last_reload_at": self.last_reload_at, "last_error": self.last_error}

    async def check(self) -> tuple[bool, Any]:
        """/readyz `checks.config`: always ready (a refused reload changed nothing), its detail the status."""
        return True, self.status()
