"""The decision log: record fields, argument redaction, stdout and file sinks, line atomicity, failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.load import ConfigError
from gateway.config.model import DecisionLogConfig, TelemetryConfig
from gateway.context import Actor, ApprovalState, CallContext, Decision, Principal, ToolInfo, canonical_json
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.telemetry.decision_log import DecisionLog, decision_record, default_redactor, rfc3339
from gateway.telemetry.tracing import Telemetry
from gateway.timefmt import iso_utc
from tests.support.otlp import OtlpReceiver

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def call(**changes: Any) -> CallContext:
    principal = Principal(id="agent-b", issuer="https://idp.example", subject="agent-b",
                          attributes={"tenant": "acme"}, chain=(Actor("agent-a"), Actor("user-1")),
                          token="SECRET-TOKEN")
    ctx = CallContext(method="tools/call", request_id=7,
                      params={"name": "pay", "arguments": {"account": "ac-1", "amount": 5, "password": "hunter2"}},
                      principal=principal, upstream="payments", tool=ToolInfo("payments", "pay"),
                      session_id="s-1", task_id="task-9")
    for key, value in changes.items():
        setattr(ctx, key, value)
    return ctx


def test_record_has_every_field() -> None:
    ctx = call(decision=Decision("approval_required", ("hold-large-payments",), eval_us=61.25,
                                 policy_version="sha256:abc", shadow_outcome="deny"),
               approval=ApprovalState("ap-1", "approved", ("alice",), "ok by me", 3.5),
               credential_mode="minted", result={"content": []}, trace_id="f" * 32)
    record = decision_record(ctx)
    assert record["type"] == "decision"
    assert record["decision_id"] == ctx.decision_id
    assert RFC3339.match(record["time"])
    assert record["trace_id"] == "f" * 32  # no current span: the context's trace id
    assert record["principal"] == "agent-b" and record["issuer"] == "https://idp.example"
    assert record["chain"] == ["agent-a", "user-1"] and record["tenant"] == "acme"
    assert (record["session_id"], record["task_id"], record["method"]) == ("s-1", "task-9", "tools/call")
    assert (record["upstream"], record["tool"]) == ("payments", "pay")
    assert record["args_digest"].startswith("sha256:") and "args" not in record
    assert record["decision"] == "approval_required" and record["policy_ids"] == ["hold-large-payments"]
    assert record["shadow_decision"] == "deny" and record["policy_version"] == "sha256:abc"
    assert record["eval_us"] == 61.2 or record["eval_us"] == 61.3
    assert record["approval"] == {"id": "ap-1", "outcome": "approved", "decided_by": ["alice"],
                                  "comment": "ok by me", "wait_s": 3.5}
    assert record["credential_mode"] == "minted"
    assert record["outcome"] == "ok" and "reason" not in record
    assert record["duration_ms"] >= 0
    assert "SECRET-TOKEN" not in json.dumps(record)


@pytest.mark.parametrize(("error", "result", "reason"), [
    (GatewayError("upstream_timeout"), None, "upstream_timeout"),
    (UpstreamErrorResponse({"code": -32602, "message": "bad"}), None, "upstream_rpc_error"),
    (asyncio.CancelledError(), None, "request_cancelled"),
    (RuntimeError("boom"), None, "internal_error"),
    (None, {"isError": True, "content": []}, "tool_error"),
])
def test_errors_become_a_reason(error: BaseException | None, result: Any, reason: str) -> None:
    record = decision_record(call(error=error, result=result, decision=Decision("allow")))
    assert record["reason"] == reason
    assert record["outcome"] == ("ok" if error is None else "error")
    assert "shadow_decision" not in record


def test_undecided_call_records_no_decision() -> None:
    record = decision_record(call(error=GatewayError("rate_limited")))
    assert record["decision"] is None and record["policy_ids"] == [] and record["reason"] == "rate_limited"


def test_args_only_with_include_args_and_always_through_the_redactor() -> None:
    seen: list[Any] = []

    def redactor(args: Any) -> Any:
        seen.append(args)
        return {k: ("***" if k == "account" else v) for k, v in args.items()}

    record = decision_record(call(), include_args=True, redactor=redactor)
    assert seen == [{"account": "ac-1", "amount": 5, "password": "hunter2"}]
    assert record["args"] == {"account": "***", "amount": 5, "password": "hunter2"}
    fallback = decision_record(call(), include_args=True)
    assert fallback["args"] == {"account": "ac-1", "amount": 5, "password": "[REDACTED]"}
    assert default_redactor({"x": [{"Api_Key": "k"}]}) == {"x": [{"Api_Key": "[REDACTED]"}]}


async def test_trace_and_span_ids_come_from_the_current_span(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(TelemetryConfig.model_validate({"traces": {"endpoint": otlp.url}}), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "pay") as span:
            record = decision_record(call(), current_ids=telemetry.current_ids)
    finally:
        await telemetry.close()
    context = span.get_span_context()
    assert record["trace_id"] == f"{context.trace_id:032x}" and record["span_id"] == f"{context.span_id:016x}"


async def test_stdout_is_the_default_sink(capsys: pytest.CaptureFixture[str]) -> None:
    log = DecisionLog(DecisionLogConfig())
    await log.start()
    log.record_decision(call(decision=Decision("deny", ("forbid-x",))))
    log.event("policy_reload", outcome="ok", policy_version="v2")
    await log.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["decision", "policy_reload"]
    assert lines[0]["decision"] == "deny" and lines[1]["policy_version"] == "v2" and RFC3339.match(lines[1]["time"])


async def test_records_before_start_are_written_and_after_close_are_counted() -> None:
    stream = io.StringIO()
    log = DecisionLog(DecisionLogConfig(), stream=stream, on_drop=lambda: dropped.append(1))
    dropped: list[int] = []
    log.event("early")
    await log.start()
    await log.close()
    log.event("late")
    assert [json.loads(line)["type"] for line in stream.getvalue().splitlines()] == ["early"]
    assert log.dropped == 1 and dropped == [1]


async def test_file_sink_is_line_atomic_under_concurrency(tmp_path: Path) -> None:
    """Two logs (two gateways) append to one file from many tasks; every line is one whole record."""
    path = tmp_path / "logs" / "decisions.jsonl"
    config = DecisionLogConfig(path=path, include_args=True)
    logs = [DecisionLog(config), DecisionLog(config)]
    for log in logs:
        await log.start()
    big = "x" * 5000  # records larger than a pipe buffer: torn writes would show

    async def writer(n: int) -> None:
        for i in range(25):
            ctx = call()
            ctx.params = {"name": "pay", "arguments": {"n": n, "i": i, "blob": big}}
            logs[n % 2].record_decision(ctx)
            if i % 5 == 0:
                await asyncio.sleep(0)  # yield so the writers interleave with the producers

    await asyncio.gather(*(writer(n) for n in range(20)))
    for log in logs:
        await log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 500
    seen = {(r["args"]["n"], r["args"]["i"]) for r in map(json.loads, lines)}
    assert len(seen) == 500


async def test_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    log = DecisionLog(DecisionLogConfig(path=tmp_path))  # a directory
    with pytest.raises(ConfigError) as info:  # named by its config key, as serve reports it
        await log.start()
    assert "decision_log.path" in str(info.value) and "Is a directory" in str(info.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
async def test_write_failure_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(DecisionLogConfig(path=Path("/dev/full")))
    await log.start()
    log.event("one")
    log.event("two")
    await log.close()
    assert log.dropped == 2
    assert "decision log write failed" in caplog.text


async def test_values_the_fast_encoder_refuses_are_still_written(tmp_path: Path) -> None:
    """Integers past 64 bits, lone surrogates and odd values take the stdlib path; every line stays JSON."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    log.event("probe", big=2**70, text="lone \ud800 surrogate", when=Path("/x"), fine="ünïcode")
    log.event("probe", small=1, nested={"list": [1.5, None, True]})
    await log.close()
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["type"] for line in lines] == ["probe", "probe"]
    assert lines[0]["big"] == 2**70 and lines[0]["text"] == "lone \ud800 surrogate"
    assert lines[0]["when"] == "/x" and lines[0]["fine"] == "ünïcode"
    assert lines[1]["nested"] == {"list": [1.5, None, True]}


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False) | st.integers(0, 4_102_444_800).map(float)
       | st.integers(0, 4_102_444_800_000).map(lambda ms: ms / 1000 - 0.0000005))
def test_record_times_are_what_datetime_would_write(timestamp: float) -> None:
    """rfc3339 formats by hand (it is on every record); it must agree with datetime to the millisecond."""
    expected = dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rfc3339(timestamp) == expected


_TIMES = (st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False) | st.integers(0, 4_102_444_800).map(float)
          | st.integers(0, 4_102_444_800_000_000).map(lambda us: us / 1e6))


@given(_TIMES)
def test_replay_snapshot_times_are_what_datetime_would_write(timestamp: float) -> None:
    """authz_input.time is formatted by hand too; replay parses it back with datetime.fromisoformat."""
    expected = dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()
    assert iso_utc(timestamp) == expected
    assert dt.datetime.fromisoformat(iso_utc(timestamp)) == dt.datetime.fromtimestamp(timestamp, dt.UTC)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@given(_JSON)
def test_canonical_json_is_the_documented_json_dumps_form(value: Any) -> None:
    """The digest an approval binds to must not change with the encoder that is reused across calls."""
    assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                               allow_nan=False)


def test_canonical_json_still_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def writer_pid(log: DecisionLog) -> int:
    process = log._process
    assert process is not None and process._proc is not None
    return process._proc.pid


async def test_the_writer_process_is_owned_by_the_log(tmp_path: Path) -> None:
    """start() starts one writer process, close() drains the buffer and reaps it: nothing outlives the app."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    before = {t.ident for t in threading.enumerate()}
    await log.start()
    pid = writer_pid(log)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2] == b"gateway.telemetry.decision_writer"
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "decision-log-writer"]
    for i in range(300):
        log.event("n", i=i)
        if i % 50 == 0:
            await asyncio.sleep(0)
    await log.close()
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == list(range(300))
    await log.start()  # a restarted log writes again (tests and reloads reuse one object)
    assert writer_pid(log) != pid
    log.event("again")
    await log.close()
    assert json.loads(path.read_text().splitlines()[-1])["type"] == "again"


async def test_a_killed_writer_process_loses_only_what_it_held_and_is_started_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.jsonl"
    dropped: list[int] = []
    log = DecisionLog(DecisionLogConfig(path=path), on_drop=lambda: dropped.append(1))
    await log.start()
    log.event("before", i=0)
    assert await log.flush()
    pid = writer_pid(log)
    os.kill(pid, signal.SIGKILL)
    process = log._process
    assert process is not None and process._proc is not None
    await asyncio.wait_for(process._proc.wait(), 10)
    log.record_decision(call(decision=Decision("allow", ("p",))))
    log.event("after", i=1)
    assert await log.flush()
    assert writer_pid(log) != pid
    await log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["before", "decision", "after"]
    assert log.dropped == 0 and dropped == [] and "starting it again" in caplog.text


async def test_the_writer_outlives_signals_sent_to_the_whole_process_group(tmp_path: Path) -> None:
    """Ctrl-C in a terminal (SIGINT) or a service manager's stop (SIGTERM to the group) reach the writer too: it
    writes on until the gateway closes its pipe, so records already handed over are not lost."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    pid = writer_pid(log)
    log.event("before")
    assert await log.flush()
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    log.event("after")
    assert await log.flush()
    assert writer_pid(log) == pid  # the same process wrote both
    await log.close()
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["before", "after"]


async def test_values_marshal_cannot_carry_are_still_recorded(tmp_path: Path) -> None:
    """A fact of a type marshal refuses (a bug elsewhere) costs neither the record nor its batch."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    odd = call(decision=Decision("allow", ("p",)))
    odd.extra["task"] = {"calls": 1, "odd": object()}
    odd.extra["authz_input"] = lambda ctx: ("call_tool", ("p", {}, ()), ("u", "t", True, False, False, False,
                                            "internal", False), False, "dev", False, ctx.extra["task"], 0.0, False)
    log.record_decision(odd)
    log.record_decision(call(decision=Decision("deny", ("q",))))
    await log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["decision"] for line in lines] == ["allow", "deny"]
    assert lines[0]["authz_input"]["task"]["calls"] == 1 and "object" in lines[0]["authz_input"]["task"]["odd"]


async def test_a_record_that_cannot_be_built_keeps_its_id_and_never_the_raw_arguments(tmp_path: Path) -> None:
    """The facts carry the arguments unredacted (the writer digests them): a record the writer cannot build (a
    bug) is written as its id and the error, so the batch survives and no secret reaches the log."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(DecisionLogConfig(path=path))
    await log.start()
    broken = call(decision=Decision("allow", ("p",)))
    broken.params = {"name": "pay", "arguments": {"password": "hunter2-secret", "n": float("nan")}}  # no JSON
    log.record_decision(broken)
    log.record_decision(call(decision=Decision("deny", ("q",))))
    await log.close()
    text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {"type": "decision", "decision_id": broken.decision_id, "record_error": lines[0]["record_error"]}
    assert lines[1]["decision"] == "deny" and "hunter2" not in text


KILLED_GATEWAY = """
import asyncio, os, signal, sys
from pathlib import Path
from gateway.config.model import DecisionLogConfig
from gateway.telemetry.decision_log import DecisionLog

async def main():
    log = DecisionLog(DecisionLogConfig(path=Path(sys.argv[1])))
    await log.start()
    for i in range(200):
        log.event("n", i=i)
    await log._send(log._take())  # shipped to the writer, perhaps not yet written
    print(log._process._proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_records_shipped_before_the_gateway_is_killed_are_still_written(tmp_path: Path) -> None:
    """SIGKILL ends the gateway with no clean-up; the writer reads to the end of its pipe and writes it all."""
    path = tmp_path / "decisions.jsonl"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", KILLED_GATEWAY, str(path),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == -signal.SIGKILL
    writer = int(out)
    try:
        pidfd = os.pidfd_open(writer)  # the orphaned writer: readable once it has exited
    except ProcessLookupError:
        pass  # already gone
    else:
        exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await asyncio.wait_for(exited, 10)
        finally:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == list(range(200))


async def test_a_closed_stream_is_a_counted_loss_not_a_dead_writer(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    log = DecisionLog(DecisionLogConfig(), stream=stream)
    stream.close()
    await log.start()
    log.event("lost")
    await log.close()
    assert log.dropped == 1 and "decision log write failed" in caplog.text
