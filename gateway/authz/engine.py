"""The policy engine: owns the loaded policy set (and an optional shadow set), reloads it safely, decides calls.

Start-up refuses to run without a valid set (`load_sync` raises). Later reloads (file change seen by
the watcher, or `reload()` on SIGHUP) parse and validate in a thread and swap the set atomically; a
broken change keeps the last good set and is reported (log, `on_reload(False, message)`, `status()`).
A call reads the current set once, so calls in flight finish under the set they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.authz import entities as E
from gateway.authz.evaluate import EntityCache, decide, decide_approve
from gateway.authz.policyset import LoadedPolicies, PolicyLoadError, fingerprint, load_policies
from gateway.config.model import PoliciesConfig
from gateway.context import CallContext, Decision, Outcome, Principal, ToolInfo
from gateway.errors import GatewayError

log = logging.getLogger("customs.authz")

ReloadCallback = Callable[[bool, str], None]
ShadowCallback = Callable[[Outcome, Outcome], None]  # (enforced, shadow)


_NO_FACTS = E.CallFacts()


def _granted(ctx: CallContext | None) -> bool:
    """A call a person already approved is decided with approval == "granted" (the re-check)."""
    return ctx is not None and ctx.approval is not None and ctx.approval.outcome in ("approved", "reused")


class PolicyEngine:
    """Implements gateway.pipeline.Authorizer over Cedar policies in `config.dir` (+ `config.shadow_dir`)."""

    def __init__(self, config: PoliciesConfig, environment: str, *, on_reload: ReloadCallback | None = None,
                 on_shadow_disagreement: ShadowCallback | None = None, poll_s: float = 1.0,
                 bounds: E.Bounds = E.DEFAULT_BOUNDS) -> None:
        self.config = config
        self.environment = environment
        self._on_reload = on_reload
        self._on_shadow = on_shadow_disagreement
        self._poll_s = poll_s
        self._bounds = bounds
        self._entities = EntityCache()
        self._current: LoadedPolicies | None = None
        self._shadow: LoadedPolicies | None = None
        self._seen: tuple[tuple[str, int, int], ...] = ()
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.shadow_error: str | None = None
        self.loaded_at: float | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.shadow_disagreements = 0

    # ---- loading -------------------------------------------------------------------------------

    def _load_both(self, config: PoliciesConfig | None = None) -> tuple[LoadedPolicies, LoadedPolicies | None,
                                                                         str | None]:
        """Load the enforced set (raises) and the shadow set (its failure is only reported)."""
        config = config or self.config
        current = load_policies(config.dir)
        shadow: LoadedPolicies | None = None
        shadow_error: str | None = None
        if config.shadow_dir is not None:
            try:
                shadow = load_policies(config.shadow_dir)
            except PolicyLoadError as exc:
                shadow_error = str(exc)
        return current, shadow, shadow_error

    def _install(self, loaded: tuple[LoadedPolicies, LoadedPolicies | None, str | None],
                 seen: tuple[tuple[str, int, int], ...]) -> None:
        current, shadow, shadow_error = loaded
        self._current = current
        if shadow is not None or shadow_error is None:
            self._shadow = shadow  # a broken shadow set keeps the last good shadow
        self.shadow_error = shadow_error
        if shadow_error:
            log.warning("shadow policies not loaded: %s", shadow_error)
        self._seen = seen
        self.last_error = None
        self.loaded_at = time.time()

    def load_sync(self) -> LoadedPolicies:
        """Load at start-up; raises PolicyLoadError listing every problem (the gateway must not start)."""
        seen = fingerprint(self.config.dir, self.config.shadow_dir)
        loaded = self._load_both()
        self._install(loaded, seen)
        log.info("policies %s loaded from %s (%d policies)", loaded[0].version, loaded[0].source, len(loaded[0]))
        return loaded[0]

    async def reload(self, config: PoliciesConfig | None = None) -> bool:
        """Re-read the policy directories; on failure keep the last good set. Returns success.

        `config` (SIGHUP with an edited config file) may name other directories: they are read instead
        and, once a set loads from them, watched from then on; a failure keeps the old directories too."""
        async with self._lock:
            target = self.config if config is None else \
                self.config.model_copy(update={"dir": config.dir, "shadow_dir": config.shadow_dir})
            seen = fingerprint(target.dir, target.shadow_dir)
            try:
                loaded = await asyncio.to_thread(self._load_both, target)
            except PolicyLoadError as exc:
                if target == self.config:  # do not retry the same broken files every poll
                    self._seen = seen
                self.reload_failures += 1
                self.last_error = str(exc)
                log.error("policy reload failed; keeping version %s: %s", self.version, exc)
                self._notify(False, str(exc))
                return False
            previous = self.version
            self.config = target
            self._install(loaded, seen)
            self.reloads += 1
            message = f"policies {previous or '-'} -> {loaded[0].version} ({len(loaded[0])} policies)"
            log.info("%s", message)
            self._notify(True, message)
            return True

    def _notify(self, ok: bool, message: str) -> None:
        if self._on_reload is not None:
            try:
                self._on_reload(ok, message)
            except Exception:  # a metrics callback must never break reloading
                log.exception("on_reload callback failed")

    # ---- watcher -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the policy files (when `policies.watch`); load first if not loaded yet."""
        if self._current is None:
            await asyncio.to_thread(self.load_sync)
        if self.config.watch and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="customs-policy-watcher")

    async def close(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                now = await asyncio.to_thread(fingerprint, self.config.dir, self.config.shadow_dir)
                if now != self._seen:
                    await self.reload()
            except Exception:  # keep watching whatever one poll hit
                log.exception("policy watcher poll failed")

    # ---- status --------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str:
        return self._current.version if self._current else ""

    @property
    def policies(self) -> LoadedPolicies | None:
        return self._current

    def policy_quorum(self, policy_id: str) -> int | None:
        """The `@quorum("N")` of a policy in the enforced set (None: not annotated, or no such policy)."""
        current = self._current
        return current.quorum_by_id.get(policy_id) if current is not None else None

    def status(self) -> dict[str, Any]:
        """For /readyz detail: ready iff a set is loaded; a failed reload shows here until fixed."""
        current = self._current
        return {
            "loaded": current is not None,
            "version": current.version if current else None,
            "policies": len(current) if current else 0,
            "dir": str(self.config.dir),
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "shadow": {"version": self._shadow.version if self._shadow else None, "error": self.shadow_error,
                       "disagreements": self.shadow_disagreements} if self.config.shadow_dir else None,
        }

    # ---- decisions -----------------------------------------------------------------------------

    def _with_shadow(self, enforced: Decision, principal: Principal, action: str, tool: ToolInfo,
                     facts: E.CallFacts, granted: bool) -> Decision:
        shadow = self._shadow
        if shadow is None:
            return enforced
        other = decide(shadow, principal, action, tool, facts, granted=granted, bounds=self._bounds,
                       cache=self._entities)
        if other.outcome != enforced.outcome:
            self.shadow_disagreements += 1
            if self._on_shadow is not None:
                try:
                    self._on_shadow(enforced.outcome, other.outcome)
                except Exception:
                    log.exception("on_shadow_disagreement callback failed")
        return Decision(enforced.outcome, enforced.policy_ids, enforced.errors, enforced.eval_us,
                        enforced.policy_version, other.outcome)

    def decide(self, principal: Principal, action: str, tool: ToolInfo, ctx: CallContext | None) -> Decision:
        """Decide one call. Raises GatewayError("policy_unavailable") only when no set is loaded."""
        current = self._current
        if current is None:
            raise GatewayError("policy_unavailable")
        # When no policy (enforced or shadow) reads the context, the call's facts cannot matter.
        facts = _NO_FACTS if current.reads_no_context and self._shadow is None else \
            E.facts_from_ctx(ctx, self.environment)
        granted = _granted(ctx)
        enforced = decide(current, principal, action, tool, facts, granted=granted, bounds=self._bounds,
                          cache=self._entities)
        return self._with_shadow(enforced, principal, action, tool, facts, granted)

    def visible(self, principal: Principal, action: str, tool: ToolInfo) -> Decision:
        """Should a list show this item? Decided with empty arguments; approval-required items show."""
        current = self._current
        if current is None:
            return Decision("deny", errors=("no policy set loaded",))
        return decide(current, principal, action, tool, E.CallFacts(args={}, environment=self.environment),
                      bounds=self._bounds, cache=self._entities)

    def decide_approve(self, user_id: str, groups: list[str], approval_attrs: dict[str, Any]) -> Decision:
        """May person `user_id` (in `groups`) decide this pending call? approval_attrs: id, upstream, tool,
        args, requester, chain."""
        current = self._current
        if current is None:
            raise GatewayError("policy_unavailable")
        return decide_approve(current, user_id, groups, approval_attrs)
