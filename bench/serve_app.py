"""Run a benchmark server app on 127.0.0.1 until killed, printing `listening on URL` (shared by bench servers)."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Callable

from aiohttp import web


async def serve(make_app: Callable[[], web.Application], port: int, path: str = "", backlog: int = 1024) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=backlog).start()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}{path}", flush=True)
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await runner.cleanup()


def main(doc: str | None, make_app: Callable[[], web.Application], path: str = "", backlog: int = 1024) -> None:
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(make_app, parser.parse_args().port, path, backlog))
