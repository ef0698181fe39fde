"""Per-task caches of credentials: ending a task costs its own entries, pruning stays amortized.

Keys are tuples whose first element is the task id. Dropping one task's entries touches only those
entries (an index by task), not the whole cache: a sweep ending thousands of idle sessions would
otherwise rebuild the cache once per session. Pruning runs when the cache passes its limit and then
raises the limit to twice what survived, so a cache full of live entries is not rebuilt on every
insert either. `PruneLimit` is that rule on its own; the in-memory revocation store uses it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
Key = tuple[str, ...]


class PruneLimit:
    """When a structure that is pruned by scanning it whole is due: once its size passes the limit, which then
    doubles over what survived (at least `floor`), so a structure full of live entries is not rescanned on
    every insert."""

    def __init__(self, floor: int) -> None:
        self._floor = floor
        self._limit = floor
        self.prunes = 0  # how often the structure was scanned (tests read it)

    def due(self, size: int) -> bool:
        return size > self._limit

    def pruned(self, size: int) -> None:
        self.prunes += 1
        self._limit = max(self._floor, 2 * size)


class TaskCache(Generic[V]):
    """`key -> value` with `forget_task(task_id)` and amortized pruning of entries `stale(value, now)`."""

    def __init__(self, stale: Callable[[V, float], bool], *, limit: int = 4096) -> None:
        self._stale = stale
        self.limit = PruneLimit(limit)
        self._items: dict[Key, V] = {}
        self._by_task: dict[str, set[Key]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> V | None:
        return self._items.get(key)

    def put(self, key: Key, value: V, now: float) -> None:
        if key not in self._items and self.limit.due(len(self._items) + 1):
            self._prune(now)
        self._items[key] = value
        self._by_task.setdefault(key[0], set()).add(key)

    def forget_task(self, task_id: str) -> None:
        for key in self._by_task.pop(task_id, ()):
            self._items.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._items.items() if self._stale(v, now)]:
            del self._items[key]
            keys = self._by_task.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_task[key[0]]
        self.limit.pruned(len(self._items))
