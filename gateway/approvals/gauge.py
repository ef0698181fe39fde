"""The `customs.approvals.pending` gauge's source: the store's own count of pending items.

Counting events per replica cannot work with a shared store: an item created on one replica and
decided on another is never taken away by either. So the gauge reports what the store holds, the
same number on every replica. The metric callback must not do I/O (it runs inside a Prometheus
scrape or the OTLP exporter's thread), so this owner reads the count in a task and hands it over:

    gauge = PendingGauge(store, metrics.set_approvals_pending)   # no I/O; an owner: start/close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.approvals.store import ApprovalStore
from gateway.errors import GatewayError

log = logging.getLogger("customs.approvals.gauge")


class PendingGauge:
    """Refreshes the count every `interval_s`, and soon after any change the store reports (this replica's
    own, and with Redis every replica's through pub/sub). Changes arriving during a read coalesce into one
    more read, so a burst of approvals costs a couple of reads, not one each."""

    def __init__(self, store: ApprovalStore, publish: Callable[[int | None], None], *,
                 interval_s: float = 5.0) -> None:
        self._store = store
        self._publish = publish
        self.interval_s = interval_s
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._store.add_listener(self._on_change)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="approvals-pending-gauge")

    async def close(self) -> None:
        self._store.remove_listener(self._on_change)
        task, self._task = self._task, None
        if task is None:
            return
        pending = {task}
        while pending:  # redis-py can swallow a cancel that lands mid-command: cancel until done
            task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)

    def _on_change(self, approval_id: str) -> None:
        self._changed.set()

    async def _run(self) -> None:
        while True:
            self._changed.clear()  # before the read: a change during it triggers one more
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval_s)  # a periodic timer, not sync

    async def refresh(self) -> None:
        """Read the count and publish it; None (the gauge reports nothing) while the store cannot answer,
        rather than a stale number that looks current."""
        try:
            count: int | None = await self._store.count_pending()
        except GatewayError:
            log.debug("pending gauge not refreshed: approval store unavailable")
            count = None
        except Exception:
            log.exception("pending gauge refresh failed")
            count = None
        self._publish(count)
