"""A decision log on a stdout another process made non-blocking (O_NONBLOCK is shared by every holder of a
pipe: a parent that set it on its end of `customs serve | …` sets it on the gateway's stdout too).

The writer process took EAGAIN from a full pipe as a failed write: the batch was counted lost although part
of it was already in the pipe, so the reader got a torn line, and every batch the reader was slower than
was dropped. It waits until the pipe takes more instead, as a blocking stdout would.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import sys
import threading

import pytest

from gateway.config.model import DecisionLogConfig
from gateway.telemetry.decision_log import DecisionLog

RECORDS = 2000  # ~1 MB: many times what a pipe holds (64 KiB)


async def test_a_non_blocking_stdout_gets_every_line_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    received = bytearray()

    def read_all() -> None:
        select.select([read_end], [], [], 30)  # the writer has filled the pipe before anything is read
        while chunk := os.read(read_end, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    with os.fdopen(write_end, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)  # the default sink: stdout, written by the writer process
        log = DecisionLog(DecisionLogConfig())
        for number in range(RECORDS):  # queued before start: one batch, one large write
            log.event("probe", number=number, pad="x" * 500)
        reader.start()
        await log.start()
        await log.close()
    reader.join(30)
    os.close(read_end)
    lines = [json.loads(line) for line in bytes(received).splitlines()]  # none torn
    assert [line["number"] for line in lines] == list(range(RECORDS))
    assert log.dropped == 0
