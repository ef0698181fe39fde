"""Operator endpoints: /healthz (alive), /readyz (config, policies, upstreams, store — with reasons)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.transport.base import Health, Upstream

Check = Callable[[], Awaitable[tuple[bool, Any]]]


class HealthRoutes:
    def __init__(self, upstreams: Mapping[str, Upstream], checks: Mapping[str, Check],
                 draining: Callable[[], bool]) -> None:
        self._upstreams = upstreams
        self._checks = checks
        self._draining = draining

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        async def probe(upstream: Upstream) -> Health:
            probe_fn = getattr(upstream, "probe", None)
            try:
                if probe_fn is not None:
                    result: Health = await asyncio.wait_for(probe_fn(), 5.0)
                    return result
                return upstream.health()
            except Exception as exc:  # a failing probe is a not-ready answer, never a 500
                return Health(False, f"probe failed: {type(exc).__name__}")

        names = list(self._upstreams)
        healths = await asyncio.gather(*(probe(self._upstreams[n]) for n in names))
        upstreams = {n: {"ready": h.ready, "detail": h.detail, "restarts": h.restarts}
                     for n, h in zip(names, healths, strict=True)}
        checks: dict[str, Any] = {}
        ready = all(h.ready for h in healths)
        for name, check in self._checks.items():
            ok, detail = await check()
            checks[name] = {"ready": ok, "detail": detail}
            ready = ready and ok
        if self._draining():
            ready = False
            checks["shutdown"] = {"ready": False, "detail": "draining"}
        body = {"status": "ready" if ready else "not_ready", "upstreams": upstreams, "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz)]
