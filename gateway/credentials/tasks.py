"""Tasks: which task a call belongs to, and ending tasks (which revokes every credential minted for them).

A call's task is, in order: an explicit id in `params._meta["customs/task"]` (scoped to the
principal, so two agents cannot share or end each other's tasks), else its MCP session (including
the gateway's implicit per-principal session for stateless clients), else a per-principal idle
window (`tasks.idle_s`). A task ends on session DELETE / session expiry (the session manager calls
`session_ended`), idle timeout (explicit and idle-window tasks, by the sweeper), an explicit
`end_task`, or gateway shutdown. With a shared (Redis) store an explicit task may be served by several
replicas: it ends by its agent or once unused for `idle_s` on all of them, never because one replica
went idle on it or stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.context import CallContext, Principal
from gateway.credentials.revocation import RevocationStore
from gateway.errors import GatewayError
from gateway.jsonrpc import META_TASK_KEY as META_TASK_KEY  # re-exported: its home is the edge check
from gateway.jsonrpc import is_task_id
from gateway.timefmt import rfc3339_ms

log = logging.getLogger("customs.credentials.tasks")

TaskKind = Literal["session", "explicit", "idle"]
EventSink = Callable[[dict[str, Any]], None]
OWED_RETRY_S = 1.0  # an end the store could not take is tried again this often, until it is taken


def _final(reason: str) -> bool:
    """Whether an end refuses the task from now on. Not an idle end: an agent naming its explicit task again after
    a pause (a person deciding on a held payment for longer than idle_s) was refused `task_ended`, and the retry
    used up the approval. Its credentials are revoked all the same; the task then starts anew."""
    return reason != "idle_timeout"


def _short_hash(value: str, length: int = 24) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def session_task_id(session_id: str) -> str:
    """The task id of a session: a hash, so upstreams never see the session id itself."""
    return "s-" + _short_hash(session_id)


def explicit_task_id(value: str, principal: Principal) -> str:
    """An agent-chosen task id, made unique per principal."""
    return f"{value}@{_short_hash(principal.key, 12)}"


def meta_task(params: dict[str, Any]) -> str | None:
    """The agent-supplied task id in `_meta` (one that is no task id was refused at the edge: jsonrpc)."""
    meta = params.get("_meta")
    value = meta.get(META_TASK_KEY) if isinstance(meta, dict) else None
    return value if is_task_id(value) else None


def named_task(params: dict[str, Any], principal: Principal, session_id: str | None) -> str | None:
    """The task a call belongs to as `TaskTracker.resolve` finds it, without marking it used: for the record of a
    call that reaches no stage (an item that does not exist). None for an idle task (no session), which only the
    tracker knows."""
    explicit = meta_task(params)
    if explicit is not None:
        return explicit_task_id(explicit, principal)
    return session_task_id(session_id) if session_id else None


@dataclass
class Task:
    id: str
    principal_key: str
    kind: TaskKind
    last_used: float
    ends_at: float | None = None
    started: float = 0.0  # first seen on this replica (compared with the store's lost_at)
    # The calls of an explicit or idle-window task still running (a call lives while the pipeline holds its
    # context): held for approval longer than idle_s, such a task was ended under them, and the approved call
    # then failed credential_unavailable (task_ended). Sessions count their own calls (gateway/sessions.py).
    # Weak references (a list: ~60 bytes a task, where a WeakValueDictionary took ~740), pruned by the sweep.
    calls: list[weakref.ref[CallContext]] = field(default_factory=list)

    def running(self) -> bool:
        """Whether a call of the task still runs (its context alive); forgets the ones that ended."""
        self.calls = [ref for ref in self.calls if ref() is not None]
        return bool(self.calls)


class TaskTracker:
    """Resolves task ids for calls and ends tasks: revocation, cache eviction, a decision-log event."""

    def __init__(self, revocations: RevocationStore, *, idle_s: float = 300.0,
                 on_event: EventSink | None = None, clock: Callable[[], float] = time.time,
                 owed_for_s: float = 3660.0) -> None:
        """`owed_for_s`: how long an end the store could not take is tried again (the longest a token lives)."""
        self.revocations = revocations
        self.idle_s = idle_s
        self._owed_for_s = owed_for_s
        self._owed: dict[str, asyncio.Task[None]] = {}  # task id -> its end, retried until the store takes it
        self._on_event = on_event
        self._clock = clock
        self._tasks: dict[str, Task] = {}
        self._idle_by_principal: dict[str, str] = {}
        self._session_tasks: dict[str, str] = {}  # session id -> its task id (a hash: computed once per session)
        self._on_end: list[Callable[[str], None]] = []
        self._on_reset: list[Callable[[str], None]] = []
        self._stop = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    def on_end(self, callback: Callable[[str], None]) -> None:
        """Run `callback(task_id)` whenever a task ends (e.g. to drop cached tokens)."""
        self._on_end.append(callback)

    def on_reset(self, callback: Callable[[str], None]) -> None:
        """Run `callback(task_id)` when a live task has no token on record: cached minted ones are no good."""
        self._on_reset.append(callback)

    def resolve(self, ctx: CallContext) -> str:
        """The task of this call (see module doc); marks it used now."""
        now = self._clock()
        principal = ctx.principal
        explicit = meta_task(ctx.params)
        if explicit is not None:
            return self._running(ctx, self._touch(explicit_task_id(explicit, principal), principal, "explicit", now))
        if ctx.session_id:
            task_id = self._session_tasks.get(ctx.session_id)
            if task_id is None:
                if len(self._session_tasks) >= 65536:  # bounded: ended sessions are not tracked here
                    self._session_tasks.clear()
                task_id = self._session_tasks[ctx.session_id] = session_task_id(ctx.session_id)
            return self._touch(task_id, principal, "session", now)
        current = self._idle_by_principal.get(principal.key)
        task = self._tasks.get(current) if current else None
        if current is None or task is None or now - task.last_used >= self.idle_s:
            current = "i-" + secrets.token_hex(12)
            self._idle_by_principal[principal.key] = current
        return self._running(ctx, self._touch(current, principal, "idle", now))

    def _running(self, ctx: CallContext, task_id: str) -> str:
        task = self._tasks[task_id]
        if len(task.calls) >= 64:  # a busy task between sweeps: keep the list to about its calls running
            task.running()
        task.calls.append(weakref.ref(ctx))
        return task_id

    def _touch(self, task_id: str, principal: Principal, kind: TaskKind, now: float) -> str:
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = Task(task_id, principal.key, kind, now, started=now)
        task.last_used = now
        return task_id

    def task(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def set_end(self, task_id: str, ends_at: float | None) -> None:
        """Record a task's known end (credentials minted for it never outlive it)."""
        task = self._tasks.get(task_id)
        if task is not None:
            task.ends_at = ends_at

    def known_end(self, task_id: str, principal: Principal | None = None) -> float | None:
        """The earliest known end of the task: its recorded end, or the agent's own token expiry."""
        ends = [t for t in ((self._tasks[task_id].ends_at if task_id in self._tasks else None),
                            principal.expires_at if principal is not None else None) if t is not None]
        return min(ends) if ends else None

    async def end_task(self, task_id: str, reason: str = "explicit", principal_key: str | None = None) -> list[str]:
        """End a task: revoke its credentials (in the shared store), drop caches, log the revocation."""
        task = self._tasks.pop(task_id, None)
        if task is not None and task.kind == "idle":
            self._idle_by_principal.pop(task.principal_key, None)
        principal = task.principal_key if task else principal_key
        try:
            jtis = await self.revocations.revoke_task(task_id, final=_final(reason))
        except Exception:
            self._owe(task_id, reason, principal)
            raise
        finally:
            # What this replica holds goes whether or not the store took the end (it may be down): cached tokens
            # dropped, exchanged ones revoked at their server. The store's failure used to skip this.
            for callback in self._on_end:
                callback(task_id)
        self._emit_revoked(task_id, reason, principal, jtis)
        return jtis

    def _emit_revoked(self, task_id: str, reason: str, principal: str | None, jtis: list[str]) -> None:
        self._emit({"event": "credentials_revoked", "task_id": task_id, "reason": reason, "principal": principal,
                    "jtis": jtis, "count": len(jtis),
                    "time": rfc3339_ms(self._clock())})  # the decision log's own time format

    def _owe(self, task_id: str, reason: str, principal: str | None) -> None:
        """The store could not take the end (Redis down): its tokens' records stayed, so introspection on every
        replica went on answering them active until they expired, once Redis was back. Make the end when the
        store answers again, in the background, and log the revocation then."""
        if task_id in self._owed:
            return
        owed = asyncio.create_task(self._settle_owed(task_id, reason, principal), name="customs-owed-task-end")
        self._owed[task_id] = owed
        owed.add_done_callback(lambda done: self._owed.pop(task_id, None) if self._owed.get(task_id) is done
                               else None)

    async def _settle_owed(self, task_id: str, reason: str, principal: str | None) -> None:
        deadline = time.monotonic() + self._owed_for_s  # past it, every token of the task has expired anyway
        while time.monotonic() < deadline:
            await asyncio.sleep(OWED_RETRY_S)  # a retry period while the store is away, not synchronisation
            try:
                jtis = await self.revocations.revoke_task(task_id, final=_final(reason))
            except Exception:
                continue
            log.info("task %s: its end was recorded once the revocation store answered again", task_id)
            self._emit_revoked(task_id, reason, principal, jtis)
            return

    async def ensure_live(self, task_id: str) -> None:
        """Refuse an explicit task that has ended, on this replica or another one sharing the store.

        Such a task is known to every replica its agent calls through, and each keeps cached credentials
        for it; only the replica that ended it dropped them. Session and idle-window tasks live on one
        replica, whose own end_task already dropped them, so they need no store round trip.
        """
        task = self._tasks.get(task_id)
        if task is None or task.kind != "explicit":
            return
        try:
            ended, recorded = await self.revocations.check(task_id, used_for_s=self.idle_s)
            if not recorded:  # any token cached for it was revoked (an idle end elsewhere, no marker) or expired
                for callback in self._on_reset:
                    callback(task_id)
            if not ended and task.started <= self.revocations.lost_at:
                # The store lost its data after this task began here, and its end marker may have gone with
                # it: end it (the marker again, in the store's new data, so every replica refuses it).
                await self.end_task(task_id, "store_reset")
                raise GatewayError("credential_unavailable", "The task has ended", data={"task_ended": True})
        except GatewayError:
            raise
        except Exception as exc:  # fail closed: a cached token may be a revoked one
            raise GatewayError("credential_unavailable", "Revocation store unavailable") from exc
        if ended:
            self._tasks.pop(task_id, None)  # ended elsewhere: no revocation (or event) of ours to add
            for callback in self._on_end:
                callback(task_id)
            raise GatewayError("credential_unavailable", "The task has ended", data={"task_ended": True})

    async def session_ended(self, session_id: str, principal_key: str | None = None,
                            reason: str = "session_end") -> list[str]:
        """`principal_key`: the session's owner, named in the event even if no call ever resolved its task
        (its set-up requests carried credentials all the same). `reason`: shutdown when the gateway stops."""
        return await self.end_task(session_task_id(session_id), reason, principal_key)

    def _shared(self, task: Task) -> bool:
        """An explicit task with a shared store: other replicas may be serving it, so this one's view of it
        (idle here, or this replica stopping) does not end it for everyone."""
        return task.kind == "explicit" and self.revocations.shared

    def _forget(self, task_id: str) -> None:
        """Drop this replica's state of a task that lives on elsewhere (its cached tokens too); no revocation."""
        self._tasks.pop(task_id, None)
        for callback in self._on_end:
            callback(task_id)

    async def sweep(self) -> list[str]:
        """End explicit and idle-window tasks unused for `idle_s` (sessions end with their session); an
        explicit task some other replica used within `idle_s` is only forgotten here. Returns those ended."""
        now = self._clock()
        for task in [t for t in self._tasks.values() if t.kind != "session" and t.running()]:  # idle from their end
            task.last_used = now
            if self._shared(task):  # and in use for every replica: the others' sweeps ask the store
                with contextlib.suppress(Exception):
                    await self.revocations.is_ended(task.id, used_for_s=self.idle_s)
        stale = [t for t in self._tasks.values() if t.kind != "session" and now - t.last_used >= self.idle_s]
        ended: list[str] = []
        for task in stale:
            try:
                if self._shared(task) and await self.revocations.used_lately(task.id):
                    self._forget(task.id)
                    continue
                await self.end_task(task.id, "idle_timeout")
                ended.append(task.id)
            except Exception:
                log.exception("could not end idle task %s", task.id)
        return ended

    async def start(self) -> None:
        self._stop.clear()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="customs-task-sweeper")

    async def close(self) -> None:
        """Stop the sweeper and end every task this instance knows (gateway shutdown), except explicit tasks
        in a shared store: those end by their agent, or once idle on every replica."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for task in list(self._tasks.values()):
            if self._shared(task):  # the agent may go on through another replica (a rolling restart)
                self._forget(task.id)
                continue
            try:
                await self.end_task(task.id, "shutdown")
            except Exception:
                log.exception("could not revoke credentials of task %s at shutdown", task.id)
        owed = list(self._owed.values())
        if owed:  # the process ends: what the store never took stays active at introspection until it expires
            log.warning("%d task end(s) the revocation store never took: their tokens stay active at introspection "
                        "until they expire", len(owed))
        for pending in owed:
            pending.cancel()
        await asyncio.gather(*owed, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        interval = max(0.05, min(self.idle_s / 4, 30.0))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)  # periodic timer, not test synchronization
            await self.sweep()

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("decision-log sink failed for a revocation event")
