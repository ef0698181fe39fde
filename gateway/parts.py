"""Builds the pipeline's parts (identity, policy, approvals, credentials, telemetry) from the config.

`app.py` composes these with the core (sessions, router, forward). Everything here is constructed
without I/O; the returned owners are started and closed by the app's lifecycle, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.authz.engine import PolicyEngine
from gateway.authz.policyset import PolicyLoadError
from gateway.authz.stage import AuthorizeStage
from gateway.catalog import Catalog
from gateway.config import ConfigError
from gateway.config.model import Config
from gateway.context import CallContext, Principal
from gateway.pinning import MemoryPins, ToolGuard
from gateway.pipeline import Authorizer, Identifier, Recorder, Stage
from gateway.sessions import Session, SessionManager
from gateway.transport.base import Upstream

log = logging.getLogger("customs.parts")

Check = Callable[[], Awaitable[tuple[bool, Any]]]


@dataclass
class Parts:
    identifier: Identifier
    authorizer: Authorizer
    authorize: Stage
    approve: Stage
    credential: Stage
    record: Recorder
    guard: ToolGuard
    upstreams: Mapping[str, Upstream]
    engine: PolicyEngine
    finish: Callable[[CallContext], Awaitable[None]]
    inject: Callable[[dict[str, str], dict[str, Any]], None] | None = None
    routes: list[web.RouteDef] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    owners_before_upstreams: list[Any] = field(default_factory=list)
    owners_after: list[Any] = field(default_factory=list)

    async def session_ended(self, session: Session) -> None:
        return None

    async def reload(self, config_path: Path | None) -> None:
        ok = await self.engine.reload()
        log.info("SIGHUP: policies %s", "reloaded" if ok else "kept (reload failed)")


class _Anonymous:
    def __init__(self, config: Config) -> None:
        log.warning("identity mode anonymous: every caller is the same principal; use only for local work")
        self._principal = Principal(id=config.identity.anonymous_principal, issuer="anonymous",
                                    subject=config.identity.anonymous_principal,
                                    attributes=dict(config.identity.anonymous_attributes), anonymous=True)

    async def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None) -> Principal:
        return self._principal


async def _nothing(ctx: CallContext) -> None:
    return None


async def build_parts(config: Config, http: aiohttp.ClientSession, upstreams: Mapping[str, Upstream],
                      catalog: Catalog, sessions: SessionManager) -> Parts:
    engine = PolicyEngine(config.policies, config.environment)
    try:
        engine.load_sync()
    except PolicyLoadError as exc:
        raise ConfigError(str(exc).splitlines() or [str(exc)], f"policies {config.policies.dir}") from exc
    guard = ToolGuard(config.upstreams, MemoryPins(), config.pinning.mode)

    async def policy_check() -> tuple[bool, Any]:
        return engine.loaded, engine.status()

    return Parts(identifier=_Anonymous(config), authorizer=engine, authorize=AuthorizeStage(engine),
                 approve=_nothing, credential=_nothing, record=_nothing, guard=guard, upstreams=upstreams,
                 engine=engine, finish=_nothing, checks={"policies": policy_check},
                 owners_before_upstreams=[engine])

