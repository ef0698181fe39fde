"""A decision log file moved away or deleted (logrotate's default `create` mode) is reopened at its path.

The log kept writing to the descriptor it opened at start, so after a rotation every later record went into
the rotated file (or, deleted, into no file at all) while decisions.jsonl stayed empty: the audit trail an
operator reads at the configured path stopped with no error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from gateway.config.model import DecisionLogConfig
from gateway.telemetry.decision_log import DecisionLog

pytestmark = pytest.mark.asyncio


def types(path: Path) -> list[str]:
    return [json.loads(line)["type"] for line in path.read_text(encoding="utf-8").splitlines()]


async def written(path: Path, lines: int) -> None:
    """Until the writer thread has put `lines` lines in the file (polling a file, bounded by a deadline)."""
    async with asyncio.timeout(10):
        while not path.exists() or len(path.read_bytes().splitlines()) < lines:
            await asyncio.sleep(0.01)


async def test_a_file_moved_away_is_reopened_at_its_path(tmp_path: Path) -> None:
    path, rotated = tmp_path / "decisions.jsonl", tmp_path / "decisions.jsonl.1"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    log.event("before_rotation")
    await written(path, 1)
    path.rename(rotated)
    log.event("after_rotation")
    await written(path, 1)
    log.event("later")
    await log.close()
    assert types(rotated) == ["before_rotation"]
    assert types(path) == ["after_rotation", "later"]


async def write_around_a_deletion(path: Path) -> None:
    """A log writes "first", the file is deleted under it, then it writes "second" and closes."""
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    log.event("first")
    await written(path, 1)
    path.unlink()
    log.event("second")
    await log.close()


async def test_a_deleted_file_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_around_a_deletion(path)
    assert types(path) == ["second"]


async def test_a_truncated_file_is_appended_to_as_before(tmp_path: Path) -> None:
    # logrotate copytruncate: same file, emptied; O_APPEND writes land at its new end.
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    log.event("first")
    await written(path, 1)
    path.write_bytes(b"")
    log.event("second")
    await log.close()
    assert types(path) == ["second"]


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
async def test_the_writer_process_logs_at_the_gateways_level(tmp_path: Path, level: str,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """The writer process logged its reopening at INFO whatever `--log-level` said (and without the time):
    `customs serve --log-level warning` still printed it. It logs as the gateway does now."""
    path = tmp_path / "decisions.jsonl"
    logger = logging.getLogger("customs.decision_log")
    before = logger.level
    logger.setLevel(level)
    try:
        await write_around_a_deletion(path)
    finally:
        logger.setLevel(before)
    reopened = [line for line in capfd.readouterr().err.splitlines() if "was moved away or deleted" in line]
    if level == "WARNING":
        assert reopened == []
    else:
        assert len(reopened) == 1 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO customs.decision_log: ",
                                               reopened[0]), reopened


async def events_in_batches(log: DecisionLog, names: list[str]) -> None:
    """Each event in a batch of its own (flush waits until the writer wrote or reported it)."""
    for name in names:
        log.event(name)
        assert await log.flush()


async def test_a_path_that_cannot_be_opened_again_is_warned_about_once(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The log's directory removed (a cleanup, a volume remounted): the writer warned on every batch, up to twenty
    WARNING lines a second under load. It warns once, keeps writing to the file it has, and says when the path
    could be opened again."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    await events_in_batches(log, ["first"])
    path.unlink()
    directory.rmdir()
    await events_in_batches(log, ["gone 1", "gone 2", "gone 3", "gone 4"])
    directory.mkdir()
    await events_in_batches(log, ["back"])
    await log.close()
    assert types(path) == ["back"]
    err = capfd.readouterr().err
    assert len([line for line in err.splitlines() if "cannot be opened again" in line]) == 1, err


async def test_a_path_that_cannot_be_looked_at_keeps_the_file_it_has(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """stat(path) failing otherwise than 'no such file' (ENOTDIR here: its directory replaced by a file; EACCES,
    ELOOP) dropped every batch as lost, though the descriptor the writer holds still takes them, as it does when
    the path cannot be opened again."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "decisions.jsonl"
    lost: list[int] = []
    log = DecisionLog(DecisionLogConfig(path=path), on_drop=lambda: lost.append(1))
    await log.start()
    await events_in_batches(log, ["first"])
    held = directory.rename(tmp_path / "held")  # the open file moves with its directory
    directory.write_text("not a directory\n")
    await events_in_batches(log, ["second", "third"])
    await log.close()
    assert lost == [] and types(held / "decisions.jsonl") == ["first", "second", "third"]
    assert len([line for line in capfd.readouterr().err.splitlines() if "cannot be opened again" in line]) == 1
