"""A decision-log writer process that dies and cannot be started again: the gateway writes the log itself.

At start, a log with no writer process to be had is written by a thread of the gateway's process; mid-run the
same must happen, or every later record (the audit trail) would be lost until a restart. Here the interpreter
the writer runs on is gone (as an upgrade that replaced the virtualenv leaves it), and the writer is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway.config.model import DecisionLogConfig
from gateway.context import Decision
from gateway.telemetry.decision_log import DecisionLog
from tests.telemetry.test_decision_log import call, writer_pid


async def test_a_writer_that_cannot_be_started_again_leaves_the_writing_to_the_gateway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    log.event("before", i=0)
    assert await log.flush()
    pid = writer_pid(log)
    process = log._process
    assert process is not None and process._proc is not None
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(process._proc.wait(), 10)
    log.record_decision(call(decision=Decision("allow", ("p",))))
    log.event("after", i=1)

    async def written(count: int) -> list[dict[str, object]]:
        async with asyncio.timeout(10):
            while len(lines := path.read_text().splitlines()) < count:
                await asyncio.sleep(0.02)  # polling the file the log writes, bounded by the timeout
        return [json.loads(line) for line in lines]

    assert [line["type"] for line in await written(3)] == ["before", "decision", "after"]
    log.event("later", i=2)  # the gateway's own writer goes on
    assert [line["type"] for line in await written(4)][-1] == "later"
    await log.close()
    assert log.dropped == 0
    assert "cannot be started again" in caplog.text and "writing from the gateway's process" in caplog.text
