"""Run the `customs` command line as a child process, as a user runs it, and give back what it printed.

`customs_main` runs it in the test's own process instead, for checks of what the command answers to
its arguments (usage errors, refused inputs): each a child process cost ~0.2-1 s of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def customs(*argv: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`customs ARGV...` run to its end (60 s at most); exit code, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def customs_main(*argv: str | Path, main: Callable[[list[str]], int] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """`customs ARGV...` run in this process by the CLI's main() (or `main`, e.g. gateway.authz.cli's), as
    customs() reports it: the exit code (argparse's usage errors exit by SystemExit), stdout and stderr.

    Only for commands that start nothing (no serve, no demo: they would take this process's signals) and,
    from an event loop, send no request to it. An exception escapes to the test instead of being a traceback
    in stderr. Keep at least one customs() test per command family: that runs the console script itself.
    """
    if main is None:
        from gateway.cli import main
    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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
