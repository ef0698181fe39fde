"""Fixtures shared by every test area: real gateways, in-process or as child processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings

from gateway.config import Config, parse_config
from tests.support.processes import stop_async

# Property tests generate their examples on a machine shared with the rest of the suite: how fast generation goes
# depends on the machine's load, not on the code under test, so Hypothesis's too_slow health check is off.
settings.register_profile("customs", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("customs")

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Escape lone surrogates in a report's captured output: some tests feed them to code that logs,
    and pytest-xdist's workers must send each report to the controller as UTF-8."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]


def bound_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound on 127.0.0.1 (`port` 0: a free one; a given port: a server restarted where it was)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_port() -> int:
    with bound_socket() as sock:
        return int(sock.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    runner: web.AppRunner
    config: Config

    @property
    def mcp(self) -> str:
        return f"{self.url}/mcp"

    @property
    def gateway(self) -> Any:
        from gateway.keys import GATEWAY
        return self.app[GATEWAY]


def with_port(data: dict[str, Any], port: int) -> dict[str, Any]:
    listen = dict(data.get("listen") or {})
    listen.setdefault("host", "127.0.0.1")
    listen["port"] = port
    listen.setdefault("public_url", f"http://127.0.0.1:{port}")
    return {**data, "listen": listen}


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[RunningGateway]]]:
    """Start real gateways in this process on 127.0.0.1 with a free port; config given as a dict."""
    async with in_process_gateways() as start:
        yield start


@asynccontextmanager
async def in_process_gateways() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[RunningGateway]]]:
    """What start_gateway gives, for fixtures of a wider scope: the gateways stop when the block ends."""
    from gateway.app import create_app, serving_runner

    runners: list[web.AppRunner] = []

    async def start(data: dict[str, Any]) -> RunningGateway:
        sock = bound_socket()
        port = sock.getsockname()[1]
        config = parse_config(with_port(data, port))
        app = await create_app(config)
        runner = await serving_runner(app, shutdown_timeout=5, access_log=None)
        runners.append(runner)
        site = web.SockSite(runner, sock)
        await site.start()
        return RunningGateway(f"http://127.0.0.1:{port}", app, runner, config)

    try:
        yield start
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


@dataclass
class GatewayProcess:
    url: str
    proc: subprocess.Popen[str]
    config_path: Path
    log_path: Path

    @property
    def mcp(self) -> str:
        return f"{self.url}/mcp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[str], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{path.read_text(errors='replace')}")
        await asyncio.sleep(0.05)  # polling a log file for readiness, bounded by the deadline
    raise TimeoutError(f"gateway did not start:\n{path.read_text(errors='replace')}")


@pytest.fixture
async def spawn_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    """Start real gateway processes (`python -m gateway serve --config … *args`, e.g. `--log-level debug`)."""
    procs: list[GatewayProcess] = []

    def launch(data: dict[str, Any], name: str, env: dict[str, str] | None, port: int,
               args: tuple[str, ...]) -> GatewayProcess:
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(with_port(data, port)))
        log_path = tmp_path / f"{name}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_path), *args],
                                    stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
                                    env={**os.environ, **(env or {})})
        handle = GatewayProcess(f"http://127.0.0.1:{port}", proc, config_path, log_path)
        procs.append(handle)
        return handle

    async def spawn(data: dict[str, Any], *, name: str = "gw", env: dict[str, str] | None = None,
                    port: int | None = None, args: tuple[str, ...] = ()) -> GatewayProcess:
        for attempt in range(3):
            handle = launch(data, name, env, port or free_port(), args)
            try:
                # A bound for a hung start, not a measure of speed: on a loaded 2-core machine one start-up
                # (imports, policies, child processes) took over 20 s.
                await _wait_for_line(handle.log_path, "listening on", handle.proc, 120)
                return handle
            except RuntimeError:
                # A port chosen here was free when chosen; another process may take it during those seconds. Then
                # another is chosen (a port the caller gave is the caller's: that failure is theirs to see).
                if port is not None or attempt == 2 or "address already in use" not in handle.log():
                    raise
        raise AssertionError("unreachable")

    yield spawn
    await asyncio.gather(*(stop_async(handle.proc) for handle in procs if handle.proc.poll() is None))


@pytest.fixture
def permissive_policies(tmp_path: Path) -> Path:
    """A policy dir that permits every call (for protocol tests that are not about policy)."""
    return write_permissive_policies(tmp_path)


def write_permissive_policies(parent: Path) -> Path:
    """permissive_policies' dir, made under `parent` (for fixtures of a wider scope)."""
    src = REPO / "policies" / "schema.cedarschema"
    target = parent / "allow-all"
    target.mkdir()
    (target / "schema.cedarschema").write_text(src.read_text())
    (target / "allow.cedar").write_text('@id("allow-all")\npermit(principal, action, resource);\n')
    return target
