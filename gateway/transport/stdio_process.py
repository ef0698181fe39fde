"""Starting and stopping a stdio upstream's child process: minimal environment, own process group,
stderr lines to the log, and termination that escalates from closing stdin to SIGKILL."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from contextlib import suppress
from pathlib import Path

from gateway.config.model import UpstreamConfig
from gateway.transport.events import MAX_MESSAGE_BYTES

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                 "SYSTEMROOT")


def missing_program(config: UpstreamConfig) -> str | None:
    """Why the child's program could not be started as `spawn` starts it (looked up on the PATH of the child's
    environment, or a path relative to its `cwd`), or None. For config check: serve starts anyway, and the upstream
    stays unavailable, retried with backoff, until the program is there."""
    program = (config.command or [""])[0]
    if "/" in program:
        path = Path(config.cwd or ".") / program
        return None if path.is_file() and os.access(path, os.X_OK) else f"{program!r} is no executable file"
    path_list = dict(config.env).get("PATH", os.environ.get("PATH", os.defpath))
    return None if shutil.which(program, path=path_list) else f"{program!r} is no program found on PATH"


async def spawn(config: UpstreamConfig) -> asyncio.subprocess.Process:
    """The child with the inherited basics plus the upstream's `env`, never the gateway's secrets."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | dict(config.env)
    assert config.command is not None
    return await asyncio.create_subprocess_exec(
        *config.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=config.cwd, limit=MAX_MESSAGE_BYTES,
        start_new_session=True)  # own process group: stop() reaches grandchildren (npx, uvx ...)


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Close stdin, then SIGTERM the process group, then SIGKILL after the grace period."""
    if proc.returncode is not None:
        return
    if proc.stdin is not None:
        proc.stdin.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
            return
        except TimeoutError:
            continue


async def exit_code(proc: asyncio.subprocess.Process, grace_s: float) -> int | None:
    """The exit status of a child whose stdout closed; None when it lives on without it for `grace_s` (it can
    never answer again: the caller stops it, and the supervisor restarts it)."""
    try:
        async with asyncio.timeout(grace_s):
            return await proc.wait()
    except TimeoutError:
        return None


async def pump_stderr(proc: asyncio.subprocess.Process, log: logging.Logger) -> None:
    assert proc.stderr is not None
    while True:
        try:
            line = await proc.stderr.readline()
        except ValueError:
            continue  # an over-long line was discarded
        if not line:
            return
        log.info("%s", line.decode(errors="replace").rstrip())
