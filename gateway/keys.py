"""Typed application keys: the only state hung on the aiohttp Application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config.model import Config

CONFIG: web.AppKey[Config] = web.AppKey("customs.config")
GATEWAY: web.AppKey[Gateway] = web.AppKey("customs.gateway")
