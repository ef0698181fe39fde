"""A real redis-server child process per test: free port, tmp dir, kill() and restart() for fault tests.

Usage in a conftest.py:

    from tests.support.redis import redis_server, redis_factory  # noqa: F401  (re-export the fixtures)

    async def test_x(redis_server: RedisServer) -> None:
        client = redis.asyncio.from_url(redis_server.url)
        ...
        redis_server.kill()       # SIGKILL: clients see connection errors
        redis_server.restart()    # same port; data survives only with appendonly=True

`redis_factory(appendonly=True)` starts a server whose data survives kill() (AOF, fsync always).
Never touches the system Redis on 6379.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import stop

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    """One raw RESP PING; True when the server answers +PONG (not -LOADING)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server subprocess bound to 127.0.0.1:<port>, data dir under `directory`."""

    def __init__(self, directory: Path, *, appendonly: bool = False, port: int | None = None,
                 start_timeout_s: float = 10.0) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = port or _free_port()
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.directory / "redis.log")]
        if self.appendonly:
            # fsync on every write so a SIGKILL loses nothing: fault tests check data survives.
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self) -> None:
        """Start the server and wait (polling PING, bounded) until it answers."""
        if self.running:
            return
        self.proc = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if _ping(self.port):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            time.sleep(0.01)  # readiness poll of a child process, bounded by the deadline
        self.kill()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING: {self.log()}")

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a clean shutdown) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Terminate cleanly (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Kill (if running) and start again on the same port and data dir."""
        self.kill()
        self.start()

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start any number of redis-servers (`factory(appendonly=True)` for persistence); all stopped after."""
    servers: list[RedisServer] = []

    def factory(*, appendonly: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        for attempt in range(3):
            try:
                server.start()
                return server
            except RuntimeError:
                # the free port was taken between choosing and binding: choose another
                if attempt == 2:
                    raise
                server.port = _free_port()
        return server

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh, empty redis-server for this test (no persistence)."""
    return redis_factory()
