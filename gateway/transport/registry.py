"""Build the transport object for one configured upstream (streamable HTTP, legacy SSE or stdio)."""

from __future__ import annotations

import aiohttp

from gateway.config.model import UpstreamConfig
from gateway.transport.base import Upstream
from gateway.transport.sse import SseUpstream
from gateway.transport.stdio import StdioUpstream
from gateway.transport.streamable_http import StreamableHttpUpstream


def build_upstream(config: UpstreamConfig, http: aiohttp.ClientSession) -> Upstream:
    """The `Upstream` for `config.kind`; HTTP transports send through the shared client session `http`."""
    threshold, cooldown_s = config.breaker.threshold, config.breaker.cooldown_s
    if config.kind == "stdio":
        return StdioUpstream(config, breaker_threshold=threshold, breaker_cooldown_s=cooldown_s)
    if config.kind == "sse":
        return SseUpstream(config, http, breaker_threshold=threshold, breaker_cooldown_s=cooldown_s)
    return StreamableHttpUpstream(config, http, breaker_threshold=threshold, breaker_cooldown_s=cooldown_s)
