"""The exporter child's encoder writes what the SDK path (readable + encode_spans) writes, and the child POSTs it."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.config.model import TelemetryConfig
from gateway.telemetry import otlp_encode
from gateway.telemetry.attributes import DEFERRED
from gateway.telemetry.otlp_encode import OtlpEncoder, varint
from gateway.telemetry.span_export import SpanShipper
from gateway.telemetry.spans import WireContext, WireSpan, readable
from gateway.telemetry.tracing import Telemetry
from tests.support.otlp import OtlpReceiver

RESOURCE = {"service.name": "customs", "service.version": "0.1.0", "telemetry.sdk.language": "python"}
TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
UNSET, OK, ERROR = 0, 1, 2
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = range(5)


def context(span_id: int, *, trace_id: int = TRACE, remote: bool = False, flags: int = 1,
            state: tuple[tuple[str, str], ...] = ()) -> WireContext:
    return (trace_id, span_id, remote, flags, state)


def span(name: str = "tools/call get_stock", kind: int = INTERNAL, ctx: WireContext | None = None,
         parent: WireContext | None = None, attributes: dict[Any, Any] | None = None,
         links: list[tuple[WireContext, dict[Any, Any]]] | None = None,
         status: tuple[int, Any] = (UNSET, None)) -> WireSpan:
    return (name, kind, ctx or context(0xB2), parent, 1_700_000_000_000_000_000, 1_700_000_000_000_450_000,
            attributes if attributes is not None else {}, links or [], status)


def sdk(spans: list[WireSpan], resource: dict[str, Any] = RESOURCE) -> ExportTraceServiceRequest:
    """The reference: what the child sent before, the SDK's own objects and encoder."""
    sdk_resource = Resource(resource)
    return encode_spans([readable(s, sdk_resource) for s in spans])


def assert_same(spans: list[WireSpan], resource: dict[str, Any] = RESOURCE,
                encoder: OtlpEncoder | None = None) -> None:
    expected = sdk(spans, resource)
    encoder = encoder or OtlpEncoder(resource)
    for _ in range(2):  # the second pass answers from the encoder's cache
        got = encoder.encode(spans)
        assert got == expected
        assert got.SerializeToString() == expected.SerializeToString()
        assert encoder.serialize(spans) == expected.SerializeToString()  # what the child sends


SERVER_ATTRIBUTES = {
    "mcp.method.name": "tools/call", "network.transport": "tcp", "network.protocol.name": "http",
    "jsonrpc.request.id": "17", "mcp.session.id": "3f9a1c2e", "gen_ai.tool.name": "inventory__get_stock",
    "gen_ai.operation.name": "execute_tool", "customs.principal": "agent-b", "customs.issuer": "https://idp",
    "customs.chain": ("agent-a",), "customs.chain_depth": 1, "customs.decision": "allow",
    "customs.policy_ids": ("reads-allowed", "tenant-scope"), "customs.authz.eval_us": 71.5,
    "server.port": 8080, "customs.approval.approver": (), "error.type": "tool_error",
}
EVERY_TYPE = {
    "str": "x", "empty_str": "", "true": True, "false": False, "int": 42, "negative": -7, "zero": 0,
    "int64_max": 2**63 - 1, "int64_min": -(2**63), "float": 1.5, "negative_zero": -0.0, "nan": math.nan,
    "inf": math.inf, "bytes": b"\x00\xff", "strings": ("a", "b"), "ints": (1, 2, 3), "floats": (0.5, -1.0),
    "bools": (True, False), "mixed": ("a", 1, 2.5, True), "list": ["x", "y"], "empty_tuple": (),
    "nested": (("a",), (1, 2)), "none": None, "none_in_tuple": ("a", None), "mapping": {"k": 1, "": 2, 3: "v"},
}
CASES: dict[str, list[WireSpan]] = {
    "root span, no attributes": [span(kind=SERVER)],
    "child of a local parent": [span(kind=CLIENT, parent=context(0xA1), attributes={"customs.upstream": "inv"})],
    "remote parent": [span(kind=SERVER, parent=context(0xA1, remote=True), attributes=SERVER_ATTRIBUTES)],
    "trace state": [span(ctx=context(0xB2, state=(("vendor", "x"), ("congo", "t61rcWkgMzE"))),
                         parent=context(0xA1, remote=True, state=(("vendor", "x"),)))],
    "invalid trace state entries": [span(ctx=context(0xB2, state=(("Bad Key", "x"), ("ok", "1"), ("ok", "2"))))],
    "unsampled flags": [span(ctx=context(0xB2, flags=0), parent=context(0xA1, flags=0))],
    "links with attributes": [span(kind=SERVER, links=[
        (context(0xC3, trace_id=0xD4, remote=True, state=(("vendor", "y"),)),
         {"customs.link": "untrusted_parent", "customs.link.source": "meta"}),
        (context(0xC4, remote=False), {}),
        (context(0xC5, remote=True), {"n": 1, "gone": None, 7: "seven"})])],
    "error status with message": [span(status=(ERROR, "policy denied the call"))],
    "error status without message": [span(status=(ERROR, None)), span(status=(ERROR, ""))],
    "error status with a description that is no string": [span(status=(ERROR, 42)), span(status=(ERROR, ("x",)))],
    "ok status drops its message": [span(status=(OK, "fine")), span(status=(OK, None))],
    "unset status ignores text": [span(status=(UNSET, "ignored"))],
    "every kind": [span(kind=kind, ctx=context(0xB0 + kind)) for kind in range(5)],
    "every attribute type": [span(attributes=EVERY_TYPE)],
    "more than 128 attributes": [span(attributes={f"k{i}": i for i in range(200)},
                                      links=[(context(0xC3), {f"l{i}": "v" for i in range(130)})])],
    "128 exactly": [span(attributes={f"k{i}": str(i) for i in range(128)})],
    "keys the SDK converts or drops": [span(attributes={"": 1, 0: "zero", 1: "one", "1": "string one",
                                                        2.5: True, (1, 2): "t", b"k": "b", "ok": "kept"})],
    "over the limit with bad keys": [span(attributes={**{f"k{i}": i for i in range(129)}, "": 0, 5: "x"})],
    "values the SDK turns into strings": [span(attributes={"set": {1}, "complex": 1j, "ellipsis": ...,
                                                           "frozenset": frozenset(), "bytearray": bytearray(b"ab")})],
    "values it cannot encode": [span(attributes={"too_big": 2**63, "too_small": -(2**63) - 1, "in_tuple": (2**64,),
                                                 "surrogate": "\ud800", "\udfff": "key", "fine": 1})],
    "tuples holding lists or mappings (unhashable)": [span(attributes={"lists": ("a", ["b"]), "maps": ({"k": 1},),
                                                                      "fine": ("a",)})],
    "unicode": [span(name="tools/call こんにちは 😀", attributes={"ключ": "значение", "emoji": "✓ 😀",
                                                                "cjk": ("漢字", "かな"), "combining": "e\u0301"})],
    "bool, int and float that compare equal": [span(ctx=context(0xB0 + i), attributes=attrs) for i, attrs in
                                               enumerate([{"v": v} for v in (True, 1, 1.0, (True,), (1,), (1.0,),
                                                                             0.0, -0.0, False, 0)])],
    "a realistic request": [
        span("customs.identify", INTERNAL, context(0xB3), context(0xB2),
             {"customs.principal": "agent-b", "customs.chain": ("agent-a",), "customs.chain_depth": 1}),
        span("customs.authorize", INTERNAL, context(0xB4), context(0xB2),
             {"customs.decision": "allow", "customs.policy_ids": ("reads-allowed",), "customs.authz.eval_us": 70.0}),
        span("customs.credential", INTERNAL, context(0xB5), context(0xB2), {"customs.credential.mode": "none"}),
        span("tools/call get_stock", CLIENT, context(0xB6), context(0xB2),
             {"mcp.method.name": "tools/call", "customs.upstream": "inventory", "server.address": "inv.internal",
              "server.port": 8080}),
        span("tools/call inventory__get_stock", SERVER, context(0xB2), context(0xA1, remote=True),
             SERVER_ATTRIBUTES, status=(ERROR, "upstream timed out"))],
}


@pytest.mark.parametrize("spans", CASES.values(), ids=CASES.keys())
def test_the_encoder_writes_what_the_sdk_writes(spans: list[WireSpan]) -> None:
    assert_same(spans)


def test_one_encoder_across_batches_and_resources() -> None:
    encoder = OtlpEncoder(RESOURCE)
    for spans in CASES.values():  # one cache across every case, as in the child
        assert_same(spans, encoder=encoder)
    assert_same(CASES["links with attributes"], resource={})
    assert_same(CASES["unicode"], resource={"service.name": "x", "count": 3, "tags": ("a", "b"), "": "dropped"})
    assert OtlpEncoder(RESOURCE).encode([]) == sdk([]) == ExportTraceServiceRequest()
    assert OtlpEncoder(RESOURCE).serialize([]) == b""


def test_the_scope_is_the_one_given() -> None:
    scope = InstrumentationScope("other", "2.0", "https://schema", {"lib": "x"})
    encoder = OtlpEncoder(RESOURCE, scope)
    group = encoder.encode([span()]).resource_spans[0].scope_spans[0]
    assert (group.scope.name, group.scope.version, group.schema_url) == ("other", "2.0", "https://schema")
    assert encoder.serialize([span()]) == encoder.encode([span()]).SerializeToString()
    assert [(kv.key, kv.value.string_value) for kv in group.scope.attributes] == [("lib", "x")]


def test_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_encode, "CACHE_LIMIT", 16)
    encoder = OtlpEncoder(RESOURCE)
    spans = [span(ctx=context(0xB0 + i), attributes={"jsonrpc.request.id": str(i), "customs.decision": "allow"})
             for i in range(100)]
    assert_same(spans, encoder=encoder)
    assert len(encoder._pairs) <= 16
    assert len(encoder._serialized) <= 16
    statuses = [span(ctx=context(0xB0 + i), status=(ERROR, f"failure {i}")) for i in range(40)]
    assert_same(statuses, encoder=encoder)
    assert len(encoder._tails) <= 16


def test_lengths_past_one_byte_are_framed_as_protobuf_frames_them() -> None:
    """Varint lengths of two and three bytes: a long attribute, a long span name, a batch of 512 spans."""
    assert [varint(n) for n in (0, 1, 127, 128, 300, 16_383, 16_384, 2**32)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\xff\x7f", b"\x80\x80\x01",
        b"\x80\x80\x80\x80\x10"]
    assert_same([span(attributes={"long": "x" * 20_000, "n": 1}), span(name="n" * 200)])
    assert_same([span(ctx=context(i + 1), attributes={"i": i, "tool": "inventory__get_stock"}) for i in range(512)])


# -- random attribute dicts ---------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=True),
    st.text(max_size=8), st.binary(max_size=4), st.sampled_from(["\ud800", "é😀", "", "tools/call"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.lists(scalars, max_size=4).map(tuple),
                   st.dictionaries(st.text(max_size=4), scalars, max_size=3),
                   st.tuples(scalars, st.lists(scalars, max_size=2)))  # a tuple no dict can be keyed by
# Not the gateway's deferred keys ("\0customs.facts", ...): `expand` reads their values as the gateway writes them.
keys = st.one_of(st.text(max_size=12).filter(lambda key: key not in DEFERRED),
                 st.sampled_from(["", "k", "customs.decision"]), st.integers(-2, 3))


def padded(attributes: dict[Any, Any], padding: int, first: bool) -> dict[Any, Any]:
    """Past the 128 limit now and then, cheaply: filler pairs before or after the random ones."""
    filler = {f"pad.{i}": i for i in range(padding)}
    return {**filler, **attributes} if first else {**attributes, **filler}


attribute_dicts = st.builds(padded, st.dictionaries(keys, values, max_size=12),
                            st.sampled_from([0, 0, 0, 0, 120, 127, 140]), st.booleans())
SHARED = OtlpEncoder(RESOURCE)  # across examples, as the child's encoder lives across batches


# print_blob: a failure also prints its @reproduce_failure blob, since the printed example is not always the example
# (every NaN prints as `nan`, whatever its sign and payload). A failure of the SHARED pass alone may depend on what
# earlier examples left in its caches: Hypothesis may then report it as flaky, still with the example that failed.
@settings(max_examples=150, deadline=None, database=None, print_blob=True)
@given(attributes=attribute_dicts, link_attributes=attribute_dicts,
       status=st.tuples(st.sampled_from([UNSET, OK, ERROR]), st.one_of(st.none(), st.text(max_size=6))))
def test_random_attributes_encode_as_the_sdk_encodes_them(attributes: dict[Any, Any],
                                                         link_attributes: dict[Any, Any],
                                                         status: tuple[int, str | None]) -> None:
    # The second span has no links, so serialize writes it itself (a span with links takes the message path).
    spans = [span(attributes=attributes, links=[(context(0xC3, remote=True), link_attributes)], status=status),
             span(ctx=context(0xB7), attributes=attributes, status=status)]
    assert_same(spans)
    assert_same(spans, encoder=SHARED)


# -- the exporter child, end to end -------------------------------------------------------------------------------

@dataclass
class RawReceiver:
    """An OTLP/HTTP endpoint keeping each request's headers and decoded body; answers `statuses` first."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.statuses:
            return web.Response(status=self.statuses.pop(0), headers={"Retry-After": "0"})
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())  # aiohttp has already undone a gzip Content-Encoding
        self.bodies.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def raw() -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver()
    app = web.Application()
    app.add_routes([web.post("/v1/traces", receiver.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        yield receiver
    finally:
        await runner.cleanup()


async def ship(endpoint: str, spans: list[WireSpan], headers: dict[str, str] | None = None) -> None:
    """Spans through a real exporter child, flushed: the child answers whatever the collector did."""
    shipper = SpanShipper(endpoint, headers or {}, RESOURCE)
    await shipper.start()
    try:
        for one in spans:
            shipper.add(one)
        assert await shipper.flush(timeout_s=20)
        assert shipper._proc is not None and shipper._proc.returncode is None  # alive, whatever the collector said
    finally:
        await shipper.close()


async def test_the_child_posts_exactly_the_sdk_encoding(raw: RawReceiver) -> None:
    spans = CASES["a realistic request"] + CASES["links with attributes"] + CASES["every attribute type"]
    await ship(raw.url, spans, {"Authorization": "Bearer t0ken"})
    assert raw.bodies == [sdk(spans)]
    assert raw.headers[0]["Content-Type"] == "application/x-protobuf"
    assert raw.headers[0]["Authorization"] == "Bearer t0ken"


async def test_batches_over_512_spans_are_split(raw: RawReceiver) -> None:
    spans = [span(ctx=context(i + 1), attributes={"i": i}) for i in range(700)]
    await ship(raw.url, spans)
    assert [len(body.resource_spans[0].scope_spans[0].spans) for body in raw.bodies] == [512, 188]
    assert raw.bodies == [sdk(spans[:512]), sdk(spans[512:])]


async def test_transient_statuses_are_retried(raw: RawReceiver) -> None:
    raw.statuses = [503, 429]
    await ship(raw.url, CASES["error status with message"])
    assert len(raw.headers) == 3 and raw.bodies == [sdk(CASES["error status with message"])]


async def test_a_rejected_batch_is_lost_not_retried_and_the_child_goes_on(raw: RawReceiver) -> None:
    raw.statuses = [400]
    first, second = span(ctx=context(0xB1)), span(ctx=context(0xB2))
    shipper = SpanShipper(raw.url, {}, RESOURCE)
    await shipper.start()
    try:
        shipper.add(first)
        assert await shipper.flush() and shipper.dropped == 1  # answered (the batch lost, and counted)
        shipper.add(second)
        assert await shipper.flush()
    finally:
        await shipper.close()
    assert len(raw.headers) == 2 and raw.bodies == [sdk([second])]


async def test_an_unreachable_collector_costs_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # the child inherits the environment
    with socket.socket() as unlistened:  # bound, never listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        started = asyncio.get_running_loop().time()
        await ship(f"http://127.0.0.1:{unlistened.getsockname()[1]}/v1/traces", [span()])
    assert asyncio.get_running_loop().time() - started < 5  # with the default 10 s the backoff alone is 4.8-7.2 s


async def test_compression_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: RawReceiver) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    await ship(raw.url, CASES["unicode"])
    assert raw.headers[0]["Content-Encoding"] == "gzip"
    assert raw.bodies == [sdk(CASES["unicode"])]


async def test_gateway_spans_reach_a_real_otlp_receiver(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(TelemetryConfig.model_validate({"traces": {"endpoint": otlp.url}}), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "encoded", {"customs.chain": ("a", "b"), "customs.chain_depth": 2,
                                                             "customs.authz.eval_us": 1.5, "flag": True}):
            with telemetry.stage_span("customs.authorize", {"customs.decision": "deny"}):
                pass
        assert await telemetry.flush()
    finally:
        await telemetry.close()
    root = await otlp.wait_for_span(lambda s: s.name == "tools/call encoded")
    assert root.kind == "SERVER" and root.scope == "customs" and root.resource["service.name"] == "customs"
    assert root.attributes == {"mcp.method.name": "tools/call", "customs.chain": ("a", "b"),
                               "customs.chain_depth": 2, "customs.authz.eval_us": 1.5, "flag": True}
    child = await otlp.wait_for_span(lambda s: s.name == "customs.authorize")
    assert child.parent_span_id == root.span_id and child.attributes == {"customs.decision": "deny"}
