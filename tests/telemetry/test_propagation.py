"""W3C trace context in and out: HTTP headers and params._meta, any flags byte, untrusted parents as links."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config.model import TelemetryConfig
from gateway.telemetry.tracing import Telemetry
from tests.support.otlp import OtlpReceiver

TRACE_A, SPAN_A = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACE_B, SPAN_B = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def parent_of(telemetry: Telemetry, headers: object, meta: object) -> tuple[str | None, list[tuple[str, str]]]:
    context, links = telemetry.extract(headers, meta)  # type: ignore[arg-type]
    parent = None
    if context is not None:
        span_context = trace.get_current_span(context).get_span_context()
        parent = f"{span_context.trace_id:032x}-{span_context.span_id:016x}"
    return parent, [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in links]


@pytest.fixture
async def traced(otlp: OtlpReceiver) -> AsyncIterator[Telemetry]:
    telemetry = Telemetry(TelemetryConfig.model_validate({"traces": {"endpoint": otlp.url}}), env={})
    await telemetry.start()
    yield telemetry
    await telemetry.close()


@pytest.mark.parametrize("flags", ["00", "01", "03", "ff"])
def test_any_flags_byte_is_accepted_from_headers(traced: Telemetry, flags: str) -> None:
    parent, links = parent_of(traced, {"traceparent": f"00-{TRACE_A}-{SPAN_A}-{flags}"}, None)
    assert parent == f"{TRACE_A}-{SPAN_A}" and links == []


def test_header_lookup_is_case_insensitive_for_dicts_and_multidicts(traced: Telemetry) -> None:
    value = f"00-{TRACE_A}-{SPAN_A}-01"
    assert parent_of(traced, {"Traceparent": value}, None)[0] == f"{TRACE_A}-{SPAN_A}"
    assert parent_of(traced, CIMultiDict({"TRACEPARENT": value}), None)[0] == f"{TRACE_A}-{SPAN_A}"
    # What aiohttp hands the gateway (a read-only proxy), with and without a context, alone and beside `_meta`.
    assert parent_of(traced, CIMultiDictProxy(CIMultiDict({"TraceParent": value})), None)[0] == f"{TRACE_A}-{SPAN_A}"
    assert parent_of(traced, CIMultiDictProxy(CIMultiDict({"Accept": "*/*"})), None) == (None, [])
    assert parent_of(traced, CIMultiDictProxy(CIMultiDict()), {"traceparent": value})[0] == f"{TRACE_A}-{SPAN_A}"


def test_meta_wins_and_a_different_http_context_becomes_a_link(traced: Telemetry) -> None:
    parent, links = parent_of(traced, {"traceparent": f"00-{TRACE_B}-{SPAN_B}-01"},
                              {"traceparent": f"00-{TRACE_A}-{SPAN_A}-03", "tracestate": "rojo=1"})
    assert parent == f"{TRACE_A}-{SPAN_A}"
    assert links == [(TRACE_B, SPAN_B)]
    same, none = parent_of(traced, {"traceparent": f"00-{TRACE_A}-{SPAN_A}-01"},
                           {"traceparent": f"00-{TRACE_A}-{SPAN_A}-01"})
    assert same == f"{TRACE_A}-{SPAN_A}" and none == []


@pytest.mark.parametrize("bad", ["", "garbage", f"00-{'0' * 32}-{SPAN_A}-01", f"00-{TRACE_A}-{'0' * 16}-01",
                                 f"ff-{TRACE_A}-{SPAN_A}-01", f"00-{TRACE_A[:-1]}-{SPAN_A}-01"])
def test_malformed_or_invalid_traceparent_is_ignored(traced: Telemetry, bad: str) -> None:
    assert parent_of(traced, {"traceparent": bad}, {"traceparent": bad}) == (None, [])


def test_inbound_baggage_is_not_parsed_so_an_agent_cannot_fill_the_log(traced: Telemetry,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Baggage is never forwarded, so nothing reads it: the SDK's baggage propagator logged a WARNING quoting the
    whole header for one over 8,192 bytes, on every request an agent chose to send it with."""
    huge = "k=" + "v" * 100_000
    with caplog.at_level(logging.DEBUG):
        assert parent_of(traced, {"baggage": huge, "traceparent": f"00-{TRACE_B}-{SPAN_B}-01"},
                         {"traceparent": f"00-{TRACE_A}-{SPAN_A}-01", "baggage": huge}) == (
            f"{TRACE_A}-{SPAN_A}", [(TRACE_B, SPAN_B)])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_non_string_meta_values_are_ignored(traced: Telemetry) -> None:
    assert parent_of(traced, None, {"traceparent": 42, "tracestate": ["x"]}) == (None, [])
    assert parent_of(traced, None, None) == (None, [])


async def test_untrusted_inbound_context_is_a_link_on_a_root_span(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(TelemetryConfig.model_validate(
        {"traces": {"endpoint": otlp.url, "trust_inbound": False}}), env={})
    await telemetry.start()
    try:
        parent, links = telemetry.extract({"traceparent": f"00-{TRACE_B}-{SPAN_B}-01"},
                                          {"traceparent": f"00-{TRACE_A}-{SPAN_A}-01"})
        assert parent is None and len(links) == 2
        with telemetry.server_span("tools/call", "t", parent=parent, links=links):
            pass
    finally:
        await telemetry.close()
    span = await otlp.wait_for_span(lambda s: s.name == "tools/call t")
    assert span.parent_span_id is None and span.trace_id not in (TRACE_A, TRACE_B)
    assert {(link.trace_id, link.span_id) for link in span.links} == {(TRACE_A, SPAN_A), (TRACE_B, SPAN_B)}
    assert {link.attributes["customs.link"] for link in span.links} == {"untrusted_parent"}
    assert {link.attributes["customs.link.source"] for link in span.links} == {"meta", "http"}


async def test_missing_parent_gives_a_root_even_with_an_ambient_span(otlp: OtlpReceiver, traced: Telemetry) -> None:
    with traced.server_span("outer") as outer, traced.server_span("inner", parent=None):
        assert outer.is_recording()
    await traced.flush()
    inner = await otlp.wait_for_span(lambda s: s.name == "inner")
    assert inner.parent_span_id is None


async def test_inject_propagates_the_client_span_across_two_gateways(otlp: OtlpReceiver, traced: Telemetry) -> None:
    """Gateway A's CLIENT span, injected into _meta and headers, is the parent of gateway B's SERVER span."""
    second = Telemetry(TelemetryConfig.model_validate({"traces": {"endpoint": otlp.url}}), env={})
    await second.start()
    try:
        parent, _ = traced.extract(None, {"traceparent": f"00-{TRACE_A}-{SPAN_A}-03", "tracestate": "rojo=1"})
        with traced.server_span("tools/call", "delegate", parent=parent), traced.client_span("tools/call", "ask"):
            headers: dict[str, str] = {}
            meta: dict[str, object] = {"progressToken": 7}
            traced.inject(headers, meta)
            only_headers: dict[str, str] = {}
            traced.inject_headers(only_headers)
            only_meta: dict[str, object] = {}
            traced.inject_meta(only_meta)
        assert headers["traceparent"] == meta["traceparent"] == only_headers["traceparent"] == only_meta["traceparent"]
        assert meta["tracestate"] == "rojo=1" and meta["progressToken"] == 7
        assert str(meta["traceparent"]).startswith(f"00-{TRACE_A}-")
        context, links = second.extract({}, meta)
        with second.server_span("tools/call", "ask", parent=context, links=links):
            pass
    finally:
        await second.close()
        await traced.flush()
    client = await otlp.wait_for_span(lambda s: s.name == "tools/call ask" and s.kind == "CLIENT")
    server = await otlp.wait_for_span(lambda s: s.name == "tools/call ask" and s.kind == "SERVER")
    delegate = await otlp.wait_for_span(lambda s: s.name == "tools/call delegate")
    assert delegate.trace_id == client.trace_id == server.trace_id == TRACE_A
    assert delegate.parent_span_id == SPAN_A
    assert client.parent_span_id == delegate.span_id
    assert server.parent_span_id == client.span_id
    version, trace_id, span_id, flags = str(meta["traceparent"]).split("-")
    assert (version, trace_id, span_id) == ("00", TRACE_A, client.span_id)
    assert int(flags, 16) & 1  # sampled; the SDK may also keep the inbound "random" bit (03)


@given(trace_id=st.integers(1, 2**128 - 1), span_id=st.integers(1, 2**64 - 1), flags=st.sampled_from(["00", "01"]),
       state=st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True),
                                st.from_regex(r"[!-+\--<>-~]{1,20}", fullmatch=True)),
                      max_size=3, unique_by=lambda kv: kv[0]))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_injected_headers_are_what_the_w3c_propagator_writes(traced: Telemetry, trace_id: int, span_id: int,
                                                               flags: str, state: list[tuple[str, str]]) -> None:
    """The gateway formats traceparent/tracestate itself (it is hot); it must match the SDK propagator."""
    tracestate = TraceState(state).to_header()
    inbound = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags}"}
    if state:
        inbound["tracestate"] = tracestate
    parent, _ = traced.extract(inbound, None)
    with traced.server_span("tools/call", "t", parent=parent), traced.client_span("tools/call", "t") as client:
        headers: dict[str, str] = {}
        meta: dict[str, object] = {}
        traced.inject(headers, meta)
        expected: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(expected, trace.set_span_in_context(
            NonRecordingSpan(client.get_span_context())))
    assert headers == meta == expected
    assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
