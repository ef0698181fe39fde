"""Typed application keys: the only state hung on the aiohttp Application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config.model import Config
    from gateway.http.guards import HostOriginPolicy

CONFIG: web.AppKey[Config] = web.AppKey("customs.config")
GATEWAY: web.AppKey[Gateway] = web.AppKey("customs.gateway")
# The guard's Host/Origin policy, shared with the answers aiohttp's parser makes before any route (http/edge.py).
ORIGINS: web.AppKey[HostOriginPolicy] = web.AppKey("customs.origins")
