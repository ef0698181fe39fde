"""Fetch every configured upstream's tool list (for `customs policy schema --config`), over its own transport."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.config.model import Config
from gateway.transport.base import ConnectParams, Message
from gateway.transport.registry import build_upstream


async def _one(config: Config, name: str, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    upstream_config = config.upstream(name)
    assert upstream_config is not None
    upstream = build_upstream(upstream_config, http)

    async def ignore(message: Message) -> None:
        return None

    await upstream.start()
    try:
        session = await upstream.connect(ConnectParams(), ignore)
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for page in range(100):
                params = {"cursor": cursor} if cursor else {}
                answer = await session.request({"jsonrpc": "2.0", "id": page, "method": "tools/list",
                                                "params": params})
                result = answer.get("result") or {}
                tools += [t for t in result.get("tools") or [] if isinstance(t, dict)]
                cursor = result.get("nextCursor")
                if not cursor:
                    break
        finally:
            await session.close()
        return tools
    finally:
        await upstream.stop()


class ToolListError(Exception):
    """Upstreams that could not be asked for their tools: one `  <upstream>: <why>` line each."""


async def fetch_tools(config: Config) -> dict[str, list[dict[str, Any]]]:
    """{upstream: [tool, ...]} for every upstream; ToolListError naming every upstream that failed.

    Every upstream is waited for, failed or not, so that every failure is listed and each stops its own
    child and connections before asyncio.run's teardown (where StdioUpstream.stop() is bounded too).
    """
    async with aiohttp.ClientSession() as http:
        names = [u.name for u in config.upstreams]
        results = await asyncio.gather(*(_one(config, n, http) for n in names), return_exceptions=True)
    failed = [f"  {name}: {result}" for name, result in zip(names, results, strict=True)
              if isinstance(result, BaseException)]
    if failed:
        raise ToolListError("\n" + "\n".join(failed))
    return {name: result for name, result in zip(names, results, strict=True) if isinstance(result, list)}
