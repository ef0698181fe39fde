"""`customs serve` stopping while nothing reads its stdout (a paused pager, a stalled log shipper).

The decision log's close waited, with no limit, for the writer process to take what was left, and the writer
was blocked on the full stdout: SIGTERM never ended the gateway. Close now gives up after its timeout: the
writer is stopped and what it did not write is counted lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from gateway.config.model import DecisionLogConfig
from gateway.telemetry.decision_log import DecisionLog

BATCHES = (500, 2500)  # ~0.25 MB, more than the stdout pipe holds (64 KiB); ~1.3 MB, more than the writer's input
RECORDS = sum(BATCHES) + 1


async def shipped(log: DecisionLog) -> None:
    """Until the log has handed its buffer on (a batch of its own), polling, bounded by a deadline."""
    async with asyncio.timeout(10):
        while log._items:
            await asyncio.sleep(0.01)


async def test_close_ends_although_nothing_reads_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        log = DecisionLog(DecisionLogConfig())
        await log.start()
        start = 0
        for size in BATCHES:  # the writer blocks on the first; the second is more than its input pipe takes
            for number in range(start, start + size):
                log.event("stuck", number=number, pad="x" * 500)
            start += size
            await shipped(log)
        log.event("stuck", number=start)  # left in the buffer: the log's own hand-over is stuck now
        await asyncio.wait_for(log.close(timeout_s=0.5), 10)  # 0.5 s to ship, then the writer is stopped
    with os.fdopen(read_end, "rb") as pipe:
        written = pipe.read().splitlines(keepends=True)
    # The writer was stopped mid-write: its last line may be torn (no reader wanted it); the rest are whole.
    lines = [json.loads(line) for line in written if line.endswith(b"\n")]
    assert [line["number"] for line in lines] == list(range(len(lines)))
    assert len(lines) < RECORDS and log.dropped >= RECORDS - len(lines)
