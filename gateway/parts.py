"""Builds the pipeline's parts (identity, policy, approvals, credentials, telemetry) from the config.

`app.py` composes these with the core (sessions, router, forward). Everything here is constructed
without I/O; the owners listed are started and closed by the app's lifecycle, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from gateway.approvals.auth import cedar_approver_check
from gateway.approvals.gauge import PendingGauge
from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.redis import RedisApprovalStore
from gateway.approvals.signouts import MemorySignOuts, RedisSignOuts
from gateway.approvals.stage import ApproveStage
from gateway.approvals.store import ApprovalStore
from gateway.approvals.web import approval_routes
from gateway.approvals.webhooks import WebhookNotifier
from gateway.authz.engine import PolicyEngine
from gateway.authz.policyset import PolicyLoadError
from gateway.authz.stage import AuthorizeStage
from gateway.catalog import Catalog
from gateway.config import ConfigError
from gateway.config.model import Config, PoliciesConfig, RedisStore
from gateway.config_reloads import ConfigReloads
from gateway.credentials.redaction import Redactor
from gateway.credentials.service import CredentialService
from gateway.identity.metadata import split_base
from gateway.limits import Limiter, MemoryLimits, RedisLimits, slot_lease_s, sweep_interval
from gateway.pinning import MemoryPins, RedisPins, ToolGuard
from gateway.pipeline import Authorizer, Identifier
from gateway.sessions import Session
from gateway.store import RedisConnection
from gateway.taskstate import MemoryFacts, RedisFacts, TaskStage
from gateway.telemetry.observability import Observability
from gateway.tools_admin import ToolsAdmin
from gateway.transport.base import Upstream

log = logging.getLogger("customs.parts")

Check = Callable[[], Awaitable[tuple[bool, Any]]]


@dataclass
class Parts:
    identifier: Identifier
    engine: PolicyEngine
    authorize: AuthorizeStage
    approvals: ApprovalStore
    approve: ApproveStage
    credentials: CredentialService
    observability: Observability
    guard: ToolGuard
    limiter: Limiter
    facts: TaskStage
    upstreams: Mapping[str, Upstream]
    config_reloads: ConfigReloads
    redis: RedisConnection | None = None
    webhooks: WebhookNotifier | None = None
    routes: list[web.RouteDef] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    owners_before_upstreams: list[Any] = field(default_factory=list)
    owners_after: list[Any] = field(default_factory=list)

    @property
    def authorizer(self) -> Authorizer:
        return self.engine

    async def session_ended(self, session: Session, reason: str = "session_end") -> None:
        await self.credentials.session_ended(session.id, session.principal_key, reason)

    async def reload(self, config_path: Path | None, running: Config | None = None) -> bool:
        """SIGHUP: re-validate the config file, reload the policies (atomically, last good set kept) and
        re-read the signing keys.

        Policies are the part operators change live, `policies.dir` and `shadow_dir` included. Other
        config sections own open connections and child processes; a change to them is reported (with
        the sections named) and needs a restart. `running` is the config as read at start-up. Each re-read of
        the file, accepted or refused, is counted, recorded and shown in /readyz (`config_reloads`).
        """
        policies = None
        if config_path is not None:
            try:
                fresh = await asyncio.to_thread(_checked_config, config_path)
            except ConfigError as exc:
                log.error("SIGHUP: %s is invalid, nothing changed:\n  %s", config_path, "\n  ".join(exc.problems))
                self.config_reloads.refused(config_path, exc.problems)
                return False
            policies = fresh.policies
            changed = restart_needed(fresh, running) if running is not None else []
            if changed:
                log.warning("SIGHUP: config sections %s changed; they take effect after a restart",
                            ", ".join(changed))
            self.config_reloads.accepted(config_path, changed)
        ok = await self.engine.reload(policies)
        log.info("SIGHUP: policies %s", f"reloaded from {self.engine.config.dir}" if ok else "kept (reload failed)")
        # A key an operator dropped into signing.key_dir becomes the signer (on-demand rotation).
        await self.credentials.reload_keys()
        return ok


def _checked_config(path: Path) -> Config:
    """The config file, refused (ConfigError, every problem) for whatever `customs config check` refuses: the
    files it names must be usable too, or the next start would fail on a file this reload accepted. Broken
    policy directories are listed with the other problems but left alone, they are the engine's to keep."""
    from gateway.config import load_config
    from gateway.preflight import policy_problems, reload_problems
    config = load_config(path)
    problems = reload_problems(config)
    if problems:
        raise ConfigError([*policy_problems(config.policies.dir, "policies.dir"), *problems], str(path))
    return config


def restart_needed(fresh: Config, running: Config) -> list[str]:
    """The config sections (or policies fields) that differ and apply only after a restart."""
    live = {"dir", "shadow_dir"}  # the policy engine re-reads these on SIGHUP
    changed = [name for name in Config.model_fields
               if name != "policies" and getattr(fresh, name) != getattr(running, name)]
    changed += [f"policies.{name}" for name in PoliciesConfig.model_fields
                if name not in live and getattr(fresh.policies, name) != getattr(running.policies, name)]
    return changed


def _policy_engine(config: Config, obs: Observability) -> PolicyEngine:
    def on_reload(ok: bool, message: str) -> None:
        obs.policy_reloaded(ok, engine.version if engine.loaded else None, None if ok else message)

    def on_shadow_reload(ok: bool, message: str) -> None:
        obs.policy_reloaded(ok, engine.shadow_version, None if ok else message, policy_set="shadow")

    # Shadow disagreements are counted by the record stage, which knows the upstream and tool.
    from gateway.preflight import summed_totals
    engine = PolicyEngine(config.policies, config.environment, on_reload=on_reload, on_shadow_reload=on_shadow_reload,
                          summed_totals=summed_totals(config))
    try:
        engine.load_sync()
    except PolicyLoadError as exc:
        problems = list(getattr(exc, "problems", None) or [str(exc)])
        raise ConfigError(problems, f"policies in {config.policies.dir}") from exc
    return engine


def _metadata_routes(config: Config) -> list[web.RouteDef]:
    """RFC 9728 protected-resource metadata for /mcp and any /mcp/{name} path, configured or not (what upstreams
    are configured is not told here: metadata_endpoint).

    The `resource` named here is an audience the identifier accepts on that path (and only there)."""
    from gateway.identity.metadata import metadata_endpoint, protected_resource_metadata

    async def metadata(request: web.Request) -> web.Response:
        # The raw path: a name's encoded slash (`a%2Fb`, one name) is not a path's slash (`a/b`, no endpoint).
        tail = request.match_info.get("tail", "")
        path = metadata_endpoint(request.rel_url.raw_path, config.listen.resource_url) if tail else "/mcp"
        if path is None:  # no endpoint there, so no resource either
            raise web.HTTPNotFound()
        return web.json_response(protected_resource_metadata(config.listen.resource_url, config.identity, path))

    # HEAD too, as the other well-known documents (RFC 9110 §9.3.2); it was 405 here.
    return [web.get("/.well-known/oauth-protected-resource", metadata),
            # Any character, a line break too (`.` stops at one): a name's `%0A` sits in a challenge like any other.
            web.get(r"/.well-known/oauth-protected-resource/{tail:[\s\S]+}", metadata)]


def _identifier(config: Config) -> Identifier:
    """The identifier; its JWKS URLs are fetched with a client of its own (made in start()), never from the pool
    upstream calls hold: 100 slow tool calls in flight made a fetch wait for a free connection and time out, and
    the tokens of a key the IdP had just rotated in were refused for as long as the load lasted."""
    from gateway.identity import build_identifier
    try:
        return build_identifier(config.identity, config.agents, config.listen.resource_url, None,
                                max_chain_depth=config.policies.max_chain_depth)
    except ValueError as exc:  # unreadable or unusable key files, duplicate issuers
        raise ConfigError([f"identity: {exc}"], "identity") from exc


class _Stores(NamedTuple):
    approvals: ApprovalStore
    pins: Any
    limits: Any
    facts: Any


def _stores(config: Config, redis: RedisConnection | None, catalog: Catalog, credentials: CredentialService,
            on_approval: Callable[[dict[str, Any]], None]) -> _Stores:
    """The state several replicas must agree on: in Redis when the config says so, else in this process."""
    if redis is not None:
        return _Stores(RedisApprovalStore(redis.client, redis.prefix, on_event=on_approval),
                       RedisPins(redis.client, redis.prefix, on_changed=catalog.drop),
                       RedisLimits(redis.client, redis.prefix, lease_s=slot_lease_s(config)),
                       RedisFacts(redis.client, redis.prefix))
    approvals = MemoryApprovalStore(on_event=on_approval)
    pins, facts_store = MemoryPins(), MemoryFacts()
    limit_backend = MemoryLimits(sweep_s=sweep_interval(config.limits))
    credentials.tasks.on_end(facts_store.forget)  # an ended task's facts are never read again
    return _Stores(approvals, pins, limit_backend, facts_store)


def _approval_recorder(obs: Observability) -> Callable[[dict[str, Any]], None]:
    def on_approval(record: dict[str, Any]) -> None:
        record = dict(record)
        record.pop("kind", None)
        obs.approval_changed(str(record.pop("approval_id")), str(record.pop("state")), **record)

    return on_approval


def _pin_recorder(obs: Observability) -> Callable[..., None]:
    def on_pin_event(**event: Any) -> None:
        if event.get("type") == "tool_quarantined":
            obs.tool_quarantined(event["upstream"], event["tool"], event.get("reason", ""), event.get("hash"))
        else:
            obs.event(str(event.pop("type")), **event)

    return on_pin_event


def _checks(engine: PolicyEngine, config_reloads: ConfigReloads, redis: RedisConnection | None,
            identifier: Identifier) -> dict[str, Check]:
    """/readyz's checks beside the upstreams': policies, config re-reads, the store, the identifier's keys."""
    async def policy_check() -> tuple[bool, Any]:
        return engine.loaded, engine.status()

    checks: dict[str, Check] = {"policies": policy_check, "config": config_reloads.check}
    if redis is not None:
        async def store_check() -> tuple[bool, Any]:
            return await redis.check()
        checks["store"] = store_check
    readiness = getattr(identifier, "readiness", None)
    if readiness is not None:
        checks["identity"] = readiness
    return checks


def _conditional_owners(config: Config, stores: _Stores, identifier: Identifier) -> list[Any]:
    """The owners that have something to start or close only with some configs, in their start order."""
    owners: list[Any] = []
    limit_backend, pins = stores.limits, stores.pins
    if isinstance(limit_backend, MemoryLimits) and (config.limits.per_principal.rate_per_s
                                                   or config.limits.per_tool.rate_per_s):
        owners.append(limit_backend)  # sweeps refilled buckets; no rate rule, no buckets to sweep
    if isinstance(limit_backend, RedisLimits):
        owners.append(limit_backend)  # retries releases Redis could not take; ends them on close
    if isinstance(pins, RedisPins) and config.pinning.mode != "off":
        owners.append(pins)  # hears other replicas' quarantines and re-approvals
    identity_owner = identifier if hasattr(identifier, "start") else None
    if identity_owner is not None:
        owners.append(identity_owner)
    return owners


def _approvers_routes(config: Config, approvals: ApprovalStore, identifier: Identifier, engine: PolicyEngine,
                      redactor: Redactor, approve: ApproveStage, redis: RedisConnection | None) -> list[web.RouteDef]:
    return approval_routes(approvals, identifier, cedar_approver_check(engine.decide_approve),
                           redactor=redactor.redact,
                           approvers_issuer=config.approvals.approvers_issuer,
                           keepalive_s=config.approvals.keepalive_s,
                           closing=approve.shutting_down,
                           public_https=config.listen.resource_url.startswith("https://"),
                           base_path=split_base(config.listen.resource_url)[1],
                           signouts=RedisSignOuts(redis.client, redis.prefix) if redis is not None
                           else MemorySignOuts())


async def build_parts(config: Config, http: aiohttp.ClientSession, upstreams: Mapping[str, Upstream],
                      catalog: Catalog) -> Parts:
    redis = RedisConnection(config.store.redis) if isinstance(config.store, RedisStore) else None
    redactor = Redactor(config.secrets)  # one redactor: logs, decision log, spans and the approvals page agree
    obs = Observability(config, redactor.redact)
    engine = _policy_engine(config, obs)
    # Token exchanges and their revocations use a client of their own, as JWKS fetches do (_identifier): the shared
    # one's pool (100 connections) is held by upstream calls, and a slow upstream's calls would time them out.
    credentials = CredentialService(config, redis=redis, redactor=redactor,
                                    on_event=lambda event: obs.event(str(event.pop("event", "revocation")), **event),
                                    on_revocation=obs.metrics.token_revoked)
    stores = _stores(config, redis, catalog, credentials, _approval_recorder(obs))
    approvals = stores.approvals
    # A re-approval drops the upstream's cached list, so the next call re-lists and sees the tool again.
    guard = ToolGuard(config.upstreams, stores.pins, config.pinning.mode, on_event=_pin_recorder(obs),
                      on_changed=catalog.invalidate)
    page_url = config.listen.resource_url + "/approvals"
    webhooks = WebhookNotifier(config.approvals.webhooks, page_url=page_url, session=http)
    approve = ApproveStage(approvals, config.approvals, redactor.redact, notifier=webhooks, page_url=page_url,
                           policy_quorum=engine.policy_quorum, current_ids=obs.telemetry.current_ids)
    facts = TaskStage(stores.facts, {u.name: u for u in config.upstreams}, credentials.tasks.resolve,
                      redactor.contains_secret)
    identifier = _identifier(config)
    config_reloads = ConfigReloads(obs)
    checks = _checks(engine, config_reloads, redis, identifier)
    # After the store (it reads it), before the rest; no reads at all when no metric is exported.
    gauge = PendingGauge(approvals, obs.metrics.set_approvals_pending) if obs.metrics.enabled else None
    owners: list[Any] = [o for o in (redis, obs, engine, approvals, gauge, webhooks, credentials) if o is not None]
    owners += _conditional_owners(config, stores, identifier)
    return Parts(identifier=identifier, engine=engine, authorize=AuthorizeStage(engine, config.environment),
                 approvals=approvals, approve=approve, credentials=credentials, observability=obs, guard=guard,
                 limiter=Limiter(config.limits, stores.limits), facts=facts, upstreams=upstreams,
                 config_reloads=config_reloads, redis=redis, webhooks=webhooks,
                 routes=[*credentials.routes(), *obs.routes(), *_metadata_routes(config),
                         *_approvers_routes(config, approvals, identifier, engine, redactor, approve, redis),
                         *ToolsAdmin(guard, identifier, upstreams, config.pinning.admin_group).routes()],
                 checks=checks, owners_before_upstreams=owners)
