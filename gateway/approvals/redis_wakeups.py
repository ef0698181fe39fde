"""Wake-ups for the Redis approval store: a pub/sub reader that wakes this replica's waiters and listeners.

Every state change PUBLISHes the item id on `<prefix>approvals:events` (redis_scripts); the reader sets the event a
waiter of that item waits on and tells the listeners (the approvers' page streams), whichever replica made the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from gateway.approvals.redis_codec import text
from gateway.approvals.store import Listener, notify_listeners

log = logging.getLogger("customs.approvals.redis")  # the store's: these lines are about it
TRANSIENT = (RedisError, OSError, TimeoutError)


class Wakeups:
    """The events this replica's waiters wait on, by item id, and its listeners; `read` feeds both."""

    def __init__(self) -> None:
        self.changed: dict[str, asyncio.Event] = {}
        self.listeners: list[Listener] = []
        self.subscribed = asyncio.Event()

    def waiter(self, approval_id: str) -> asyncio.Event:
        """The event set at the item's next change (taken before reading the item, so no change is missed)."""
        changed = self.changed.get(approval_id)
        if changed is None:
            changed = self.changed[approval_id] = asyncio.Event()
        return changed

    def wake(self, approval_id: str) -> None:
        changed = self.changed.pop(approval_id, None)
        if changed is not None:
            changed.set()
        notify_listeners(self.listeners, approval_id)

    def wake_all(self) -> None:
        for approval_id in list(self.changed):
            self.wake(approval_id)

    def release_waiters(self) -> None:
        """Let every waiter go (the store is closing): each reads its item once more and returns."""
        for changed in self.changed.values():
            changed.set()

    async def read(self, client: Any, channel: str, closing: Callable[[], bool]) -> None:
        """Read `channel` until `closing()`, subscribing again after each loss."""
        backoff = 0.05
        while not closing():
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "subscribe":  # confirmed: from now on nothing is missed
                        backoff = 0.05
                        self.subscribed.set()
                        self.wake_all()  # changes may have been missed while unsubscribed
                    elif message.get("type") == "message":
                        self.wake(text(message["data"]))
            except TRANSIENT as exc:
                log.debug("approval pub/sub lost: %s", exc)
                self.subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)  # reconnect backoff
            backoff = min(backoff * 2, 2.0)
