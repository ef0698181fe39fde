"""The policy engine: owns the loaded policy set (and an optional shadow set), reloads it safely, decides calls.

Start-up refuses to run without a valid set (`load_sync` raises). Later reloads (file change seen by
the watcher, or `reload()` on SIGHUP) parse and validate in a thread and swap the set atomically; a
broken change keeps the last good set and is reported (log, `on_reload(False, message)`, `status()`).
The shadow set (`shadow_dir`) is loaded, watched and reported on its own (`on_shadow_reload`), whatever
the state of the enforced set. A call reads the current set once, so calls in flight finish under the set
they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.authz import entities as E
from gateway.authz.evaluate import EntityCache, decide, decide_approve
from gateway.authz.policyset import (
    ALLOW_ALL_DIR,
    Fingerprint,
    LoadedPolicies,
    PolicyLoadError,
    fingerprint,
    load_policies,
)
from gateway.authz.unsummed import unsummed_forbids
from gateway.config.model import PoliciesConfig
from gateway.context import CallContext, Decision, Outcome, Principal, ToolInfo
from gateway.errors import GatewayError

log = logging.getLogger("customs.authz")

ReloadCallback = Callable[[bool, str], None]
ShadowCallback = Callable[[Outcome, Outcome], None]  # (enforced, shadow)


_NO_FACTS = E.CallFacts()
_SHADOW_COUNTED = "shadow_disagreement_counted"  # ctx.extra: this call's disagreement is in the count


def _notify(callback: ReloadCallback | None, ok: bool, message: str) -> None:
    if callback is not None:
        try:
            callback(ok, message)
        except Exception:  # a metrics callback must never break reloading
            log.exception("policy reload callback failed")


def _granted(ctx: CallContext | None) -> bool:
    """A call a person already approved is decided with approval == "granted" (the re-check)."""
    return ctx is not None and ctx.approval is not None and ctx.approval.outcome in ("approved", "reused")


class PolicyEngine:
    """Implements gateway.pipeline.Authorizer over Cedar policies in `config.dir` (+ `config.shadow_dir`)."""

    def __init__(self, config: PoliciesConfig, environment: str, *, on_reload: ReloadCallback | None = None,
                 on_shadow_reload: ReloadCallback | None = None,
                 on_shadow_disagreement: ShadowCallback | None = None, poll_s: float = 1.0,
                 bounds: E.Bounds = E.DEFAULT_BOUNDS, summed_totals: frozenset[str] | None = None) -> None:
        """`summed_totals`: the task totals some tool's `sum_args` sums; given, every reload warns (as start-up
        does) about a forbid guarded by another total, which never fires (authz.unsummed)."""
        self.config = config
        self._summed = summed_totals
        self.environment = environment
        self._on_reload = on_reload
        self._on_shadow_reload = on_shadow_reload
        self._on_shadow = on_shadow_disagreement
        self._poll_s = poll_s
        self._bounds = bounds
        self._entities = EntityCache()
        self._current: LoadedPolicies | None = None
        self._shadow: LoadedPolicies | None = None
        self._seen: Fingerprint = ()  # the enforced set's files as last read
        self._seen_shadow: Fingerprint = ()
        self._pending: dict[str, Fingerprint] = {}  # "enforced"/"shadow" -> a change seen once, not yet loaded
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.shadow_error: str | None = None
        self.loaded_at: float | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.shadow_reload_failures = 0
        self.shadow_disagreements = 0

    # ---- loading -------------------------------------------------------------------------------

    def load_sync(self) -> LoadedPolicies:
        """Load at start-up; raises PolicyLoadError listing every problem (the gateway must not start).
        A broken shadow set is only reported (warning, `status()`): the gateway starts without it."""
        self._seen, self._seen_shadow = fingerprint(self.config.dir), fingerprint(self.config.shadow_dir)
        current = load_policies(self.config.dir)
        if self.config.shadow_dir is not None:
            try:
                self._shadow = load_policies(self.config.shadow_dir)
            except PolicyLoadError as exc:
                self.shadow_error = str(exc)
                log.warning("shadow policies not loaded: %s", exc)
        self._current = current
        self.loaded_at = time.time()
        log.info("policies %s loaded from %s (%d policies)", current.version, current.source, len(current))
        if self.config.dir.resolve() == ALLOW_ALL_DIR:
            log.warning("no policies.dir in the config and identity anonymous: every request is allowed "
                        "(policy anonymous-allow-all, local use only); name policies.dir to authorize calls")
        if self._shadow is not None:  # after the enforced set's line, as the reloads log them
            log.info("shadow policies %s loaded from %s (%d policies)", self._shadow.version, self._shadow.source,
                     len(self._shadow))
        return current

    async def reload(self, config: PoliciesConfig | None = None) -> bool:
        """Re-read the enforced and the shadow directory, each on its own: a failure of one keeps the last
        good set of that one only and is reported as its own. Returns whether the enforced set loaded.

        `config` (SIGHUP with an edited config file) may name other directories: an enforced directory is
        adopted (and watched) once a set loads from it; a shadow directory at once, so its errors show."""
        target = config or self.config
        async with self._lock:
            ok = await self._reload_enforced(target.dir)
            await self._reload_shadow(target.shadow_dir)
            return ok

    async def _reload_enforced(self, directory: Path) -> bool:
        seen = fingerprint(directory)
        try:
            loaded = await asyncio.to_thread(load_policies, directory)
        except PolicyLoadError as exc:
            if directory == self.config.dir:  # do not retry the same broken files every poll
                self._seen = seen
            self.reload_failures += 1
            self.last_error = str(exc)
            log.error("policy reload failed; keeping version %s: %s", self.version, exc)
            _notify(self._on_reload, False, str(exc))
            return False
        await self._warn_unsummed(loaded, "policies.dir")
        previous = self.version
        self.config = self.config.model_copy(update={"dir": directory})
        self._current, self._seen, self.last_error, self.loaded_at = loaded, seen, None, time.time()
        self.reloads += 1
        message = f"policies {previous or '-'} -> {loaded.version} ({len(loaded)} policies)"
        log.info("%s", message)
        _notify(self._on_reload, True, message)
        return True

    async def _reload_shadow(self, directory: Path | None) -> None:
        self.config = self.config.model_copy(update={"shadow_dir": directory})
        self._seen_shadow = fingerprint(directory)
        if directory is None:  # shadow mode switched off (or never on)
            self._shadow, self.shadow_error = None, None
            return
        try:
            loaded = await asyncio.to_thread(load_policies, directory)
        except PolicyLoadError as exc:
            self.shadow_reload_failures += 1
            self.shadow_error = str(exc)
            log.error("shadow policy reload failed; keeping shadow version %s: %s", self.shadow_version or "-", exc)
            _notify(self._on_shadow_reload, False, str(exc))
            return
        await self._warn_unsummed(loaded, "policies.shadow_dir")
        previous = self.shadow_version
        self._shadow, self.shadow_error = loaded, None
        message = f"shadow policies {previous or '-'} -> {loaded.version} ({len(loaded)} policies)"
        log.info("%s", message)
        _notify(self._on_shadow_reload, True, message)

    async def _warn_unsummed(self, loaded: LoadedPolicies, where: str) -> None:
        if self._summed is not None:
            for warning in await asyncio.to_thread(unsummed_forbids, loaded, self._summed, where):
                log.warning("%s", warning)

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
                await self._poll_once()
            except Exception:  # keep watching whatever one poll hit
                log.exception("policy watcher poll failed")

    async def _poll_once(self) -> None:
        """Reload whichever set's files changed; each set is watched on its own, so a broken enforced set
        does not hide changes of the shadow set (nor the other way round)."""
        enforced, shadow = self.config.dir, self.config.shadow_dir
        now, now_shadow = await asyncio.to_thread(lambda: (fingerprint(enforced), fingerprint(shadow)))
        due, due_shadow = self._settled("enforced", now, self._seen), self._settled("shadow", now_shadow,
                                                                                   self._seen_shadow)
        if not (due or due_shadow):
            return
        async with self._lock:
            if due and now != self._seen and enforced == self.config.dir:
                await self._reload_enforced(enforced)
            if due_shadow and now_shadow != self._seen_shadow and shadow == self.config.shadow_dir:
                await self._reload_shadow(shadow)

    def _settled(self, which: str, now: Fingerprint, seen: Fingerprint) -> bool:
        """Whether a set's changed files held still since the last poll. A file rewritten in place is empty or
        half written until its writer is done, and a deploy writes its files one by one: loaded mid-way, a set
        could be neither the old nor the new one (a forbid moved between two files, in neither) until the next
        poll. So a change loads at the first poll that sees it unchanged: one poll interval later."""
        if now == seen:
            self._pending.pop(which, None)
            return False
        if self._pending.get(which) != now:
            self._pending[which] = now
            return False
        del self._pending[which]
        return True

    # ---- status --------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str:
        # `is not None`, not truthiness: a set of no policies has a length of 0 and is still a set
        return self._current.version if self._current is not None else ""

    @property
    def shadow_version(self) -> str | None:
        return self._shadow.version if self._shadow is not None else None

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
            "version": current.version if current is not None else None,
            "policies": len(current) if current is not None else 0,
            "dir": str(self.config.dir),
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "shadow": {"version": self.shadow_version, "dir": str(self.config.shadow_dir), "error": self.shadow_error,
                       "reload_failures": self.shadow_reload_failures,
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
        return Decision(enforced.outcome, enforced.policy_ids, enforced.errors, enforced.eval_us,
                        enforced.policy_version, other.outcome)

    def _count_shadow(self, decision: Decision, step: int = 1) -> None:
        self.shadow_disagreements += step
        if step > 0 and self._on_shadow is not None:
            try:
                self._on_shadow(decision.outcome, decision.shadow_outcome or decision.outcome)
            except Exception:
                log.exception("on_shadow_disagreement callback failed")

    def count_shadow(self, ctx: CallContext) -> None:
        """Count `ctx.decision`'s disagreement with the shadow set once per call, as the call is recorded (the
        decision log's `shadow_decision`, the metric). The authorize stage calls this with the decision it keeps:
        not for the labellings a call was decided on before its tool's list was known, nor for a re-check that
        lets a released call run (its record keeps the first decision); a re-check's deny replaces the first."""
        decision = ctx.decision
        if decision is None or decision.shadow_outcome is None:
            return
        if ctx.approval is not None and decision.outcome != "deny":
            return
        disagrees = decision.shadow_outcome != decision.outcome
        counted = bool(ctx.extra.get(_SHADOW_COUNTED, False))
        if disagrees != counted:
            ctx.extra[_SHADOW_COUNTED] = disagrees
            self._count_shadow(decision, 1 if disagrees else -1)

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
        decision = self._with_shadow(enforced, principal, action, tool, facts, granted)
        if ctx is None and decision.shadow_outcome not in (None, decision.outcome):  # a decision of no call
            self._count_shadow(decision)
        return decision

    def visible(self, principal: Principal, action: str, tool: ToolInfo) -> Decision:
        """Should a list show this item? Decided with empty arguments; approval-required items show."""
        current = self._current
        if current is None:
            return Decision("deny", errors=("no policy set loaded",))
        return decide(current, principal, action, tool, E.CallFacts(args={}, environment=self.environment),
                      bounds=self._bounds, cache=self._entities)

    def decide_approve(self, user_id: str, groups: list[str], approval_attrs: dict[str, Any],
                       chain: Sequence[str] = ()) -> Decision:
        """May person `user_id` (in `groups`) decide this pending call? approval_attrs: id, upstream, tool,
        args, requester, chain; `chain`: the actors of the approver's own token (its `act` claims)."""
        current = self._current
        if current is None:
            raise GatewayError("policy_unavailable")
        return decide_approve(current, user_id, groups, approval_attrs, chain)
