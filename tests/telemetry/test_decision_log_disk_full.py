"""A decision-log write cut short by a full disk (ENOSPC, or EFBIG past the file size limit).

The writer counted the whole batch lost, though the lines before the failure were in the file, and left
the torn end of the line it was writing there: the first record written once space was back was appended
to that fragment, so it was lost as well (an unparseable line) and not counted. Now the lines written are
counted written, the rest lost, and the next write starts on a line of its own.
"""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

from gateway.config.model import DecisionLogConfig
from gateway.telemetry.decision_log import DecisionLog
from tests.telemetry.test_decision_log import writer_pid

LIMIT = 4096  # bytes the writer may put in a file: stands in for a disk with that much space left
PAD = "x" * 200


async def test_a_short_write_counts_what_it_wrote_and_the_next_line_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    # The writer process inherits the limit, and SIGXFSZ ignored (a write past the limit fails with EFBIG
    # instead of killing it); this process gets both back at once.
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, limits[1]))
    try:
        await log.start()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    for number in range(40):  # ~9 KB: the write stops mid-line at LIMIT
        log.event("full", number=number, pad=PAD)
    assert await log.flush()
    whole = [json.loads(line) for line in path.read_bytes()[:LIMIT].splitlines(keepends=True) if line.endswith(b"\n")]
    assert 0 < len(whole) < 40
    assert log.dropped == 40 - len(whole)  # the lines in the file are not counted lost
    resource.prlimit(writer_pid(log), resource.RLIMIT_FSIZE, limits)  # space again
    log.event("after", number=40)
    await log.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["number"] for line in lines[:len(whole)]] == list(range(len(whole)))
    assert lines[len(whole)] == path.read_bytes()[:LIMIT].splitlines()[-1]  # the torn line: a line of its own
    assert json.loads(lines[-1]) == {**json.loads(lines[-1]), "type": "after", "number": 40}
    assert len(lines) == len(whole) + 2
