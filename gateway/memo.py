"""Values derived from objects that recur (principals, tools), built once per object and shared."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class Memo(Generic[T, V]):
    """A value derived from an object that recurs, built once per object and then shared.

    One principal makes many calls (identifiers cache principals), one catalog entry describes a tool
    for every call of it: their span attributes and decision-record parts need not be rebuilt each
    call, and a shared dict is shipped to the exporter once per batch. Shared values are read-only:
    users copy them before adding anything.
    """

    def __init__(self, build: Callable[[T], V], limit: int = 1024) -> None:
        self._build = build
        self._limit = limit
        # By id(), with a weak reference to tell a reused id from the same object: the memo must not keep
        # principals (and their tokens) alive after the identifier's cache has let them go.
        self._items: dict[int, tuple[weakref.ref[Any], V]] = {}

    def __call__(self, item: T) -> V:
        found = self._items.get(id(item))
        if found is not None and found[0]() is item:
            return found[1]
        value = self._build(item)
        if len(self._items) >= self._limit:
            self._items.clear()
        self._items[id(item)] = (weakref.ref(item), value)
        return value
