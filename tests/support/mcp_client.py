"""Real MCP SDK clients pointed at a gateway, with an optional bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


@asynccontextmanager
async def sdk_client(url: str, token: str | None = None, *, mode: str = "legacy",
                     headers: dict[str, str] | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    """An entered `mcp.Client` over streamable HTTP. mode: "legacy" (initialize handshake),
    "auto" (server/discover, the stateless 2026-07-28 revision), or a modern version string."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=all_headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        client = Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)
        async with client:
            yield client
