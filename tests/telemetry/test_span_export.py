"""Light spans and the exporter child: faithful SDK spans on the wire, sampling, flush, and a child that dies."""

from __future__ import annotations

import asyncio
import fcntl
import marshal
import os
import signal
import time

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.config import parse_config
from gateway.config.model import TelemetryConfig
from gateway.telemetry import span_export
from gateway.telemetry.child_pipe import PIPE_BYTES
from gateway.telemetry.observability import Observability
from gateway.telemetry.span_export import MAX_BATCH, SpanShipper
from gateway.telemetry.spans import LightSpan, WireSpan, readable, wire_context
from gateway.telemetry.tracing import Telemetry
from tests.conftest import free_port
from tests.support.otlp import OtlpReceiver, stalled_collector


def config(**traces: object) -> TelemetryConfig:
    return TelemetryConfig.model_validate({"traces": traces})


def test_a_finished_light_span_becomes_the_same_sdk_span() -> None:
    finished: list[WireSpan] = []
    state = TraceState([("vendor", "x")])
    context = SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(1), trace_state=state)
    parent = SpanContext(0xA1, 0xC3, is_remote=True, trace_flags=TraceFlags(1))
    linked = SpanContext(0xD4, 0xE5, is_remote=True, trace_flags=TraceFlags(1))
    span = LightSpan("tools/call pay", SpanKind.SERVER, wire_context(context), wire_context(parent), 100,
                     {"a": 1, "gone": None},
                     [Link(linked, {"customs.link": "http_context"})], finished.append)
    span.set_attributes({"customs.chain": ["x", "y"], "skip": None})
    span.set_attribute("b", True)
    span.set_status(Status(StatusCode.ERROR, "denied"))
    span.end(250)
    span.end(300)  # a second end changes nothing
    span.set_attribute("late", 1)  # nor does anything after the end
    assert len(finished) == 1 and not span.is_recording()
    assert span.get_span_context() == context  # made from the wire form only when asked for
    sdk = readable(finished[0], Resource({"service.name": "t"}))
    assert (sdk.name, sdk.kind, sdk.start_time, sdk.end_time) == ("tools/call pay", SpanKind.SERVER, 100, 250)
    assert sdk.context is not None and sdk.parent is not None
    assert (sdk.context.trace_id, sdk.context.span_id, sdk.context.trace_state) == (0xA1, 0xB2, state)
    assert (sdk.parent.span_id, sdk.parent.is_remote) == (0xC3, True)
    assert dict(sdk.attributes or {}) == {"a": 1, "customs.chain": ("x", "y"), "b": True}
    assert sdk.status.status_code == StatusCode.ERROR and sdk.status.description == "denied"
    assert [(link.context.span_id, dict(link.attributes or {})) for link in sdk.links] == \
        [(0xE5, {"customs.link": "http_context"})]
    assert sdk.resource.attributes["service.name"] == "t"


async def test_unsampled_requests_propagate_but_export_nothing(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(config(endpoint=otlp.url, sample_ratio=0.0), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "x"), telemetry.client_span("tools/call", "x") as client:
            headers: dict[str, str] = {}
            meta: dict[str, object] = {}
            telemetry.inject(headers, meta)
        with telemetry.server_span("tools/call", "marker"):
            pass
        assert await telemetry.flush()
    finally:
        await telemetry.close()
    context = client.get_span_context()
    assert headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-00" == meta["traceparent"]
    assert otlp.spans == []


@pytest.mark.parametrize("inbound", [None, "01", "00", "03"])
def test_the_default_sampler_shortcut_decides_as_the_sampler_would(inbound: str | None) -> None:
    """With the default ParentBased(ALWAYS_ON) the gateway decides without calling the sampler."""
    results = []
    for ask_the_sampler in (False, True):
        telemetry = Telemetry(config(endpoint="http://127.0.0.1:9/v1/traces"), env={})
        assert telemetry._parent_or_on  # the default sampler is recognised
        telemetry._parent_or_on = not ask_the_sampler
        headers = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-{inbound}", "tracestate": "v=1"} if inbound else {}
        parent, _ = telemetry.extract(headers, None)
        with telemetry.server_span("tools/call", "x", parent=parent) as span:
            context = span.get_span_context()
            results.append((context.trace_flags.sampled, span.is_recording(), tuple(context.trace_state.items()),
                            context.trace_id if inbound else None))
    assert results[0] == results[1]
    assert results[0][0] == (inbound != "00")


async def test_a_killed_exporter_is_restarted_and_later_spans_arrive(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "before"):
            pass
        assert await telemetry.flush()
        await otlp.wait_for_span(lambda s: s.name == "tools/call before")
        shipper = telemetry._shipper
        assert shipper is not None and shipper._proc is not None
        old = shipper._proc.pid
        os.kill(old, signal.SIGKILL)
        await asyncio.wait_for(shipper._proc.wait(), 10)
        for n in range(3):  # the first batch after the kill finds the pipe broken and restarts the child
            with telemetry.server_span("tools/call", f"after-{n}"):
                pass
            await telemetry.flush(timeout_ms=5000)
        assert shipper._proc is not None and shipper._proc.pid != old
        await otlp.wait_for_span(lambda s: s.name == "tools/call after-2")
    finally:
        await telemetry.close()


async def test_a_backlog_goes_out_in_frames_the_widened_pipe_holds(otlp: OtlpReceiver) -> None:
    # A frame bigger than the pipe waits in the loop's transport buffer, which is then written a pipe's worth at
    # a time with the rest moved to its front after each write (~2 % of a traced gateway's CPU under load).
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        shipper = telemetry._shipper
        assert shipper is not None and shipper._proc is not None and shipper._proc.stdin is not None
        pipe = shipper._proc.stdin.transport.get_extra_info("pipe")
        with open("/proc/sys/fs/pipe-max-size") as limit:
            expected = min(PIPE_BYTES, int(limit.read()))
        assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == expected
        sent: list[int] = []
        send = shipper._send

        async def measured(message: object) -> None:
            sent.append(len(marshal.dumps(message)))
            await send(message)

        shipper._send = measured  # type: ignore[method-assign]
        for n in range(3 * MAX_BATCH + 7):
            with telemetry.server_span("tools/call", f"backlog-{n}", {"customs.upstream": "u" * 40}):
                pass
        assert await telemetry.flush()
        await otlp.wait_for_span(lambda s: s.name == f"tools/call backlog-{3 * MAX_BATCH + 6}")
        assert len([s for s in otlp.spans if s.name.startswith("tools/call backlog-")]) == 3 * MAX_BATCH + 7
        assert len(sent) >= 4 and max(sent) < expected, sent  # every frame fits the pipe
    finally:
        await telemetry.close()


async def test_spans_short_of_a_batch_reach_the_collector_without_a_flush(otlp: OtlpReceiver) -> None:
    """A few spans (no full batch) go out on the shipper's timer: nobody has to flush for them."""
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        for n in range(3):
            with telemetry.server_span("tools/call", f"few-{n}"):
                pass
        await asyncio.wait_for(otlp.wait_for_span(lambda s: s.name == "tools/call few-2"), 30)
    finally:
        await telemetry.close()


async def test_a_batch_that_cannot_be_shipped_is_dropped_and_counted(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "odd", {"odd": object()}):  # no span attribute can be this
            pass
        await telemetry.flush()
        assert telemetry.dropped == 1
        with telemetry.server_span("tools/call", "fine"):
            pass
        assert await telemetry.flush()
        await otlp.wait_for_span(lambda s: s.name == "tools/call fine")
    finally:
        await telemetry.close()


async def test_shutdown_with_a_stalled_collector_is_bounded_and_kills_the_exporter() -> None:
    """A collector that accepts connections but never answers must not hold up the gateway's shutdown.

    The exporter child blocks on its first POST, stops reading its stdin, the pipe fills, and shipping
    the rest used to wait for every queued batch to time out in turn (minutes for a busy gateway).
    """
    async with stalled_collector() as collector:
        shipper = SpanShipper(f"{collector.url}/v1/traces", {}, {"service.name": "stalled"})
        await shipper.start()
        now = time.time_ns()
        pad = "x" * 1000  # enough bytes that the batches overflow the pipe to the blocked child
        for n in range(20_000):
            shipper.add((f"tools/call t{n}", SpanKind.SERVER.value, (n + 1, n + 1, False, 1, ()), None,
                         now, now, {"pad": pad}, [], (StatusCode.UNSET.value, None)))
        first = await asyncio.wait_for(shipper.flush(timeout_s=1), 5)
        assert first is False  # nothing answers: the flush gives up in time instead of waiting
        proc = shipper._proc
        assert proc is not None
        started = time.monotonic()
        await asyncio.wait_for(shipper.close(timeout_s=1), 8)
        assert time.monotonic() - started < 5
        assert proc.returncode is not None  # the child stuck on the collector is gone, not orphaned


async def test_unchecked_appends_stay_bounded_while_the_exporter_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry hands finished spans to the shipper's `append` (no check a span): with the exporter child stuck
    on a collector that never answers (its pipe full, the writer waiting in a drain), the shipper's own timer
    still drops what is past MAX_BUFFERED, and counts it."""
    monkeypatch.setattr(span_export, "MAX_BUFFERED", 300)
    monkeypatch.setattr(span_export, "BATCH_INTERVAL_S", 0.02)
    async with stalled_collector() as collector:
        shipper = SpanShipper(f"{collector.url}/v1/traces", {}, {"service.name": "stuck"})
        await shipper.start()
        try:
            now = time.time_ns()
            pad = "x" * 1000  # enough bytes that the batches overflow the pipe to the blocked child
            append = shipper.append
            for n in range(3000):
                append((f"tools/call t{n}", SpanKind.SERVER.value, (n + 1, n + 1, False, 1, ()), None, now, now,
                        {"pad": pad}, [], (StatusCode.UNSET.value, None)))
            await asyncio.wait_for(collector.arrived.wait(), 10)
            for _ in range(50):  # wait for the writer to hang in its drain and pile up more
                append(("tools/call late", SpanKind.SERVER.value, (9, 9, False, 1, ()), None, now, now,
                        {"pad": pad}, [], (StatusCode.UNSET.value, None)))
            ticked = asyncio.Event()
            tick = shipper._tick

            def watched() -> None:  # the timer re-arms with the instance's `_tick`: this one from now on
                tick()
                ticked.set()

            shipper._tick = watched  # type: ignore[method-assign]
            for _ in range(2):  # a whole interval after the last append, the timer has run on its own
                ticked.clear()
                await asyncio.wait_for(ticked.wait(), 5)
            assert len(shipper._spans) <= 300
            assert shipper.dropped > 0  # what was trimmed is counted
        finally:
            await shipper.close(timeout_s=1)


async def test_spans_lost_while_the_collector_is_down_are_counted_and_later_spans_arrive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector down at start (or gone mid-run): calls go on, what the exporter child gives up on is
    counted in `customs.spans.dropped` (not only logged by the child), and once it is back spans arrive."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")  # the child's retry window (inherited)
    port = free_port()
    obs = Observability(parse_config({"upstreams": [{"name": "i", "url": "http://127.0.0.1:1/mcp"}],
                                      "telemetry": {"traces": {"endpoint": f"http://127.0.0.1:{port}"}}}), env={})
    await obs.start()
    try:
        for n in range(3):
            with obs.telemetry.server_span("tools/call", f"lost-{n}"):
                pass
        assert await obs.telemetry.flush() is False  # lost, not exported
        assert obs.telemetry.dropped == 3
        assert next(line for line in obs.metrics.prometheus_text().decode().splitlines()
                    if line.startswith("customs_spans_dropped_total{")).endswith(" 3.0")
        async with OtlpReceiver(port=port) as otlp:
            with obs.telemetry.server_span("tools/call", "back"):
                pass
            assert await obs.telemetry.flush()
            await otlp.wait_for_span(lambda s: s.name == "tools/call back")
            assert [s.name for s in otlp.spans] == ["tools/call back"]
        assert obs.telemetry.dropped == 3
        with obs.telemetry.server_span("tools/call", "lost-again"):  # the collector died mid-run
            pass
        assert await obs.telemetry.flush() is False and obs.telemetry.dropped == 4
        async with OtlpReceiver(port=port) as otlp:
            with obs.telemetry.server_span("tools/call", "back-again"):
                pass
            assert await obs.telemetry.flush()
            await otlp.wait_for_span(lambda s: s.name == "tools/call back-again")
    finally:
        await obs.close()


async def test_spans_held_by_an_exporter_that_dies_are_counted() -> None:
    """The child took a batch and was stuck on the collector when it died: those spans are lost and counted."""
    async with stalled_collector() as collector:
        shipper = SpanShipper(f"{collector.url}/v1/traces", {}, {"service.name": "dies"})
        await shipper.start()
        try:
            now = time.time_ns()
            for n in range(5):
                shipper.add((f"tools/call t{n}", SpanKind.SERVER.value, (n + 1, n + 1, False, 1, ()), None, now,
                             now, {}, [], (StatusCode.UNSET.value, None)))
            assert await shipper.flush(timeout_s=0.5) is False  # shipped, but the collector never answers
            await asyncio.wait_for(collector.arrived.wait(), 10)
            proc, reader = shipper._proc, shipper._reader
            assert proc is not None and reader is not None and shipper.dropped == 0
            proc.kill()
            await asyncio.wait_for(reader, 10)  # the child's reports end with it
            assert shipper.dropped == 5
        finally:
            await shipper.close(timeout_s=1)


async def test_the_last_export_shares_the_drain_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """Shutdown gave the span export 10 s of its own after the drain, so a gateway whose drain used
    `listen.drain_timeout_s` took up to 10 s more (past a 30 s kill grace). Once shutdown has begun the export
    gets what is left of the drain deadline, at least a second."""
    async with stalled_collector() as collector:
        telemetry = Telemetry(config(endpoint=collector.url), env={})
        await telemetry.start()
        with telemetry.server_span("tools/call", "late"):
            pass
        telemetry.shutdown_deadline = asyncio.get_running_loop().time()  # the drain used it all
        with caplog.at_level("WARNING", "customs.telemetry"):
            await asyncio.wait_for(telemetry.close(), 30)
        lost = [r.getMessage() for r in caplog.records if "span export did not finish" in r.getMessage()]
        assert lost == ["span export did not finish within 1 s of shutdown: unexported spans are lost"], lost
