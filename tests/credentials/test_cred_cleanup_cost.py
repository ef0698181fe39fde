"""Ending many tasks or sessions costs work in proportion to them, not to everything cached beside them.

The idle sweep ends thousands of sessions in one go; each end drops the task's cached credentials and
records the task's end. Those cleanups used to rebuild the whole cache (or rescan the whole revocation
store) per ended task, so a sweep over n tasks did n² work with the event loop blocked. These tests
count the whole-structure scans instead of timing anything.
"""

from __future__ import annotations

from collections.abc import ItemsView
from typing import Any

import jwt

from gateway.catalog import Catalog
from gateway.context import Principal
from gateway.credentials import CredentialService
from gateway.credentials.revocation import MemoryRevocations
from gateway.credentials.task_cache import TaskCache
from gateway.sessions import Session, SessionManager
from tests.credentials.helpers import Clock, agent, make_config

UPSTREAMS = [{"name": "payments", "url": "http://127.0.0.1:9002/mcp", "credentials": {"mode": "minted", "ttl_s": 60}}]
TASKS = 6_000


async def test_ending_thousands_of_tasks_never_rescans_the_token_cache(tmp_path, clock: Clock) -> None:
    svc = CredentialService(make_config(tmp_path, UPSTREAMS), clock=clock)
    await svc.start()
    try:
        pay = svc.stage.upstreams["payments"]
        tokens = {}
        for n in range(TASKS):
            tokens[n], _ = await svc.minter.mint(agent(), pay, ["pay"], {}, f"task-{n}")
        cache: TaskCache[Any] = svc.minter._cache
        assert len(cache) == TASKS
        # Every entry is live, so a prune frees nothing: the limit doubles instead of pruning on every insert.
        assert cache.limit.prunes <= 2
        again, _ = await svc.minter.mint(agent(), pay, ["pay"], {}, "task-17")
        assert again == tokens[17]  # still cached after the prunes
        for n in range(TASKS):
            await svc.end_task(f"task-{n}")
        assert len(cache) == 0 and cache.limit.prunes <= 2
        revocations = svc.minter.revocations
        assert isinstance(revocations, MemoryRevocations)
        assert revocations.limit.prunes <= 2  # 6,000 ended tasks, 6,000 revoked jtis: not one scan per end
        assert all([await revocations.is_revoked(_jti(tokens[n])) for n in (0, 2_999, TASKS - 1)])
    finally:
        await svc.close()


def test_a_task_cache_forgets_one_task_and_prunes_stale_entries() -> None:
    cache: TaskCache[float] = TaskCache(lambda until, now: until <= now, limit=4)
    for n in range(4):
        cache.put((f"t{n}", "a"), 10.0 + n, now=0.0)
    cache.put(("t0", "b"), 100.0, now=0.0)  # at the limit: a prune, nothing stale yet
    assert len(cache) == 5 and cache.limit.prunes == 1
    cache.forget_task("t0")
    assert cache.get(("t0", "a")) is None and cache.get(("t0", "b")) is None and len(cache) == 3
    for n in range(5, 11):  # the limit doubled to 8 after the first prune: the sixth insert prunes
        cache.put((f"t{n}", "a"), 100.0, now=12.5)  # t1 and t2 went stale at 11 and 12
    assert cache.limit.prunes == 2
    assert cache.get(("t1", "a")) is None and cache.get(("t2", "a")) is None
    assert cache.get(("t3", "a")) == 13.0 and len(cache) == 7
    cache.forget_task("t1")  # its entry was pruned already: forgetting it is harmless
    assert len(cache) == 7


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class _CountingDict(dict[Any, Any]):
    scans = 0

    def items(self) -> ItemsView[Any, Any]:
        type(self).scans += 1
        return super().items()


def _principal(n: int) -> Principal:
    sub = f"spiffe://acme/agent-{n}"
    return Principal(id=sub, issuer="https://idp.test", subject=sub)


async def test_ending_stateless_sessions_leaves_the_others_unscanned() -> None:
    manager = SessionManager({}, Catalog(()))
    table = _CountingDict()
    manager._stateless = table
    sessions: list[Session] = [manager.stateless(_principal(n), None, "2026-07-28", None) for n in range(2_000)]
    for session in sessions[:1_000]:
        await manager.end(session)
    assert manager._stateless is table and _CountingDict.scans == 0
    assert len(table) == 1_000
    # A session ended after a successor took its key leaves the successor in place.
    successor = manager.stateless(_principal(1), None, "2026-07-28", None)
    assert successor is not sessions[1] and table[(sessions[1].principal_key, None)] is successor
    await manager.end(sessions[1])
    assert table[(sessions[1].principal_key, None)] is successor
    assert manager.stateless(_principal(1_500), None, "2026-07-28", None) is sessions[1_500]
