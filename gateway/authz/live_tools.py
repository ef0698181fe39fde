"""Fetch every configured upstream's tool list (for `customs policy schema --config`), over its own transport."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.config.model import Config, UpstreamConfig
from gateway.credentials.static import StaticCredentials
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Message, UpstreamSession
from gateway.transport.http_base import UPSTREAM_IDLE_S
from gateway.transport.registry import build_upstream

MAX_PAGES = 100


class ToolListError(Exception):
    """Upstreams that could not be asked for their tools: one `  <upstream>: <why>` line each."""


def _own_headers(upstream: UpstreamConfig) -> dict[str, str]:
    """The credential the gateway itself holds for an upstream: its `static` header (as the pin watcher
    lists it), else none (`minted`/`token_exchange` are per principal; `none` sends nothing)."""
    if upstream.credentials.mode != "static":
        return {}
    try:
        name, value = StaticCredentials({upstream.name: upstream}).header(upstream.name)
    except GatewayError as exc:
        creds = upstream.credentials
        source = f"environment variable {creds.value_env}" if creds.value_env else f"file {creds.value_file}"
        raise ToolListError(f"{exc.reason}: the static credential's {source} has no value") from exc
    return {name: value}


async def _pages(session: UpstreamSession, headers: dict[str, str]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: Any = None
    for page in range(MAX_PAGES):
        params = {"cursor": cursor} if cursor else {}
        answer = await session.request({"jsonrpc": "2.0", "id": page, "method": "tools/list", "params": params},
                                       headers=headers)
        error = answer.get("error")
        if error is not None:  # not "no tools": the list is unknown
            code, text = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, error)
            raise ToolListError(f"tools/list answered error {code}: {text}")
        result = answer.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tools", []), list):
            raise ToolListError("tools/list answered no result object with a `tools` list")
        tools += result.get("tools", [])
        cursor = result.get("nextCursor")
        if not cursor:
            return tools
    raise ToolListError(f"tools/list still had a nextCursor after {MAX_PAGES} pages")


async def _one(config: Config, name: str, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    upstream_config = config.upstream(name)
    assert upstream_config is not None
    headers = _own_headers(upstream_config)
    upstream = build_upstream(upstream_config, http)

    async def ignore(message: Message) -> None:
        return None

    await upstream.start()
    try:
        session = await upstream.connect(ConnectParams(), ignore, headers or None)
        try:
            return await _pages(session, headers)
        finally:
            await session.close()
    except GatewayError as exc:
        mode = upstream_config.credentials.mode
        if mode in ("minted", "token_exchange") and exc.reason == "upstream_error":  # refused: say what to do
            raise ToolListError(f"{exc} (credentials mode {mode}: listed without a credential, as only an agent's "
                                "call gets one; pass its tools with --tools-json)") from exc
        raise
    finally:
        await upstream.stop()


async def fetch_tools(config: Config) -> dict[str, list[dict[str, Any]]]:
    """{upstream: [tool, ...]} for every upstream; ToolListError naming every upstream that failed.

    Every upstream is waited for, failed or not, so that every failure is listed and each stops its own
    child and connections before asyncio.run's teardown (where StdioUpstream.stop() is bounded too).
    """
    # Idle connections go after UPSTREAM_IDLE_S, as in the gateway's pool: upstreams behind one host and port share
    # them, and a slow one's request took the oldest, which uvicorn or Node (5 s keep-alive) closed just then.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=UPSTREAM_IDLE_S)) as http:
        names = [u.name for u in config.upstreams]
        results = await asyncio.gather(*(_one(config, n, http) for n in names), return_exceptions=True)
    failed = [f"  {name}: {result}" for name, result in zip(names, results, strict=True)
              if isinstance(result, BaseException)]
    if failed:
        raise ToolListError("\n" + "\n".join(failed))
    return {name: result for name, result in zip(names, results, strict=True) if isinstance(result, list)}
