"""Spans with deferred parts (shared dicts, facts) serialize as the SDK encodes them, shared dicts once a batch."""

from __future__ import annotations

import marshal
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from gateway.telemetry.attributes import FACTS, PEER, SHARED, WHO
from gateway.telemetry.otlp_encode import OtlpEncoder
from gateway.telemetry.otlp_wire import ATTRIBUTES, framed, scalar_pair
from gateway.telemetry.spans import WireSpan
from tests.telemetry.test_otlp_encode import CLIENT, RESOURCE, SERVER, assert_same, context, span

PEER_ATTRS = {"client.address": "127.0.0.1", "client.port": 45876}
WHO_ATTRS = {"customs.principal": "agent-b", "customs.issuer": "https://idp", "customs.chain": ("agent-a",),
             "customs.chain_depth": 1}
REQUEST = {"network.transport": "tcp", "mcp.protocol.version": "2025-06-18", "gen_ai.tool.name": "get_stock"}
CALL_FACTS = ("call", None, {"sku": "A-1"}, "d-1", "inventory", "task-9",
              ("allow", ("reads-allowed",), 3.5, "sha256:v7", None), None, "none", None)


def unmarshalled(spans: list[WireSpan]) -> list[WireSpan]:
    """The batch as the exporter child gets it: a dict many spans share is one object again."""
    batch: list[WireSpan] = marshal.loads(marshal.dumps(spans))
    return batch


def server(i: int, **own: Any) -> WireSpan:
    attributes = {"mcp.method.name": "tools/call", SHARED: REQUEST, "jsonrpc.request.id": str(i), PEER: PEER_ATTRS,
                  WHO: WHO_ATTRS, FACTS: CALL_FACTS, **own}
    return span(f"tools/call get_stock {i % 3}", SERVER, context(0xB0 + i), None, attributes)


def test_a_batch_of_requests_sharing_their_dicts() -> None:
    spans = unmarshalled([server(i) for i in range(20)] +
                         [span("tools/call get_stock", CLIENT, context(0xC0 + i), context(0xB0 + i),
                               {SHARED: REQUEST, "mcp.session.id": "s-1"}) for i in range(20)])
    assert spans[0][6][SHARED] is spans[19][6][SHARED]  # what the per-batch memo relies on
    assert_same(spans)


SHARED_CASES: dict[str, dict[str, Any]] = {
    "unset values in a shared dict are left out": {SHARED: {"a": None, "b": "x", "c": None}},
    "an own key given again by a shared dict": {"customs.principal": "own", WHO: WHO_ATTRS},
    "a shared key given again by a later own key": {WHO: WHO_ATTRS, "customs.principal": "later"},
    "two shared dicts with one key": {SHARED: {"k": 1, "x": "a"}, PEER: {"k": 2}},
    "a facts key given again": {FACTS: ("credential", "minted", "http://a"), "customs.credential.mode": "x"},
    "an unset own value next to a shared dict": {"own": None, SHARED: {"k": "v"}},
    "values of every kind in a shared dict": {SHARED: {"f": 1.5, "nan": math.nan, "neg": -3, "big": 2**63,
                                                       "bytes": b"\x01", "list": ["a", 1], "t": ("a", "b"),
                                                       "surrogate": "\ud800", "empty": ""}},
    "a key the SDK converts in a shared dict": {SHARED: {7: "seven", "ok": 1}},
    "an empty shared dict": {SHARED: {}, "k": "v"},
    "over the limit only once expanded": {SHARED: {f"s{i}": i for i in range(100)},
                                          **{f"o{i}": str(i) for i in range(40)}},
    "at the limit once expanded": {SHARED: {f"s{i}": i for i in range(100)}, **{f"o{i}": str(i) for i in range(28)}},
    "decision facts with an unset version": {FACTS: ("decision", "deny", ("p",), 1.0, None, "allow")},
    "facts alone": {FACTS: CALL_FACTS},
    "a shared dict alone": {WHO: WHO_ATTRS},
    "a shared dict alone with unset values": {PEER: {"client.address": None, "client.port": 1}},
    "a shared dict alone over the limit": {SHARED: {f"s{i}": i for i in range(129)}},
    "a shared dict alone at the limit": {SHARED: {f"s{i}": i for i in range(128)}},
}


@pytest.mark.parametrize("attributes", SHARED_CASES.values(), ids=SHARED_CASES.keys())
def test_deferred_parts_in_every_shape(attributes: dict[Any, Any]) -> None:
    # Twice in one batch (one object after unmarshalling), and beside a span that shares nothing.
    assert_same(unmarshalled([span(attributes=attributes), span(ctx=context(0xB9), attributes=attributes),
                              span(ctx=context(0xBA), attributes={"plain": 1})]))


def test_one_shared_dict_clashing_with_one_span_only() -> None:
    shared = {"customs.upstream": "inventory", "server.port": 8080}
    assert_same(unmarshalled([span(attributes={SHARED: shared, "own": 1}),
                              span(ctx=context(0xB9), attributes={SHARED: shared, "server.port": 9}),
                              span(ctx=context(0xBA), attributes={SHARED: shared})]))


def test_span_names_and_ids_of_every_width() -> None:
    assert_same([span(name="", kind=CLIENT, ctx=context(1, trace_id=1)),
                 span(name="x" * 300, ctx=context(2**64 - 1, trace_id=2**128 - 1), parent=context(0)),
                 span(name="tools/call 😀", ctx=context(5, state=(("vendor", "x"),)))])


@pytest.mark.parametrize("value", [True, False, 0, 1, -1, 127, 128, 2**63 - 1, -(2**63), 0.0, -0.0, 1.5, math.inf,
                                   -math.inf, math.nan, "", "é😀", "x" * 200])
def test_a_scalar_pair_is_what_the_generated_classes_write(value: Any) -> None:
    field = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}[type(value)]
    expected = KeyValue(key="k" * 130, value=AnyValue(**{field: value})).SerializeToString()
    assert scalar_pair("k" * 130, value) == framed(ATTRIBUTES, expected)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "\ud800", b"x", ("a",), None, [1], {"k": 1}])
def test_values_left_to_the_generated_classes(value: Any) -> None:
    assert scalar_pair("k", value) is None
    assert scalar_pair("\udfff", "fine") is None


# Few keys, so the parts often give the same key; values of every kind the gateway ships.
small_keys = st.sampled_from(["a", "b", "c", "customs.decision", "mcp.session.id"])
plain_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=True),
                         st.text(max_size=6), st.lists(st.text(max_size=3), max_size=2).map(tuple))
parts = st.dictionaries(small_keys, plain_values, max_size=4)


@settings(max_examples=200, deadline=None, database=None)
@given(own=parts, shared=parts, who=parts, peer=parts, order=st.permutations([SHARED, WHO, PEER, "own"]))
def test_random_deferred_parts_encode_as_the_sdk_encodes_them(own: dict[str, Any], shared: dict[str, Any],
                                                             who: dict[str, Any], peer: dict[str, Any],
                                                             order: list[str]) -> None:
    given_parts = {SHARED: shared, WHO: who, PEER: peer}
    attributes: dict[str, Any] = {}
    for part in order:
        if part == "own":
            attributes.update(own)
        else:
            attributes[part] = given_parts[part]
    assert_same(unmarshalled([span(attributes=attributes), span(ctx=context(0xB9), attributes=attributes)]))
    encoder = OtlpEncoder(RESOURCE)
    assert encoder.serialize(unmarshalled([span(attributes=attributes)])) == encoder.encode(
        [span(attributes=attributes)]).SerializeToString()
