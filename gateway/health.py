"""Operator endpoints: /healthz (alive), /readyz (config, policies, upstreams, store — with reasons)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.transport.base import Health, Upstream

Check = Callable[[], Awaitable[tuple[bool, Any]]]
CHECK_TIMEOUT_S = 2.0  # a store check (Redis ping) that takes longer is reported not ready, with that reason


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

        async def bounded(check: Check) -> tuple[bool, Any]:
            # A store that hangs (a paused Redis) answers not-ready within a probe's patience, with its reason.
            try:
                return await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            except TimeoutError:
                return False, f"no answer within {CHECK_TIMEOUT_S:g} s"

        names = list(self._upstreams)
        check_names = list(self._checks)
        healths, results = await asyncio.gather(
            asyncio.gather(*(probe(self._upstreams[n]) for n in names)),
            asyncio.gather(*(bounded(self._checks[n]) for n in check_names)))
        upstreams = {n: {"ready": h.ready, "detail": h.detail, "restarts": h.restarts}
                     for n, h in zip(names, healths, strict=True)}
        checks: dict[str, Any] = {n: {"ready": ok, "detail": detail}
                                  for n, (ok, detail) in zip(check_names, results, strict=True)}
        ready = all(h.ready for h in healths) and all(ok for ok, _ in results)
        if self._draining():
            ready = False
            checks["shutdown"] = {"ready": False, "detail": "draining"}
        body = {"status": "ready" if ready else "not_ready", "upstreams": upstreams, "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz)]
