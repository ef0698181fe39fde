"""JSON arguments → Cedar values: null, floats, huge ints, mixed arrays, escapes and the size bounds."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authz import entities as E
from gateway.context import Actor, Principal, ToolInfo

SCHEMA = cedarpy.Schema.from_str((Path(__file__).resolve().parents[2] / "policies/schema.cedarschema").read_text())


def test_null_is_dropped_everywhere() -> None:
    record, truncated = E.convert_args({"a": None, "b": [1, None, 2], "c": {"d": None}})
    assert record == {"b": [1, 2], "c": {}}
    assert truncated is False


def test_integral_floats_become_long_and_fractions_decimal() -> None:
    record, _ = E.convert_args({"whole": 100.0, "frac": 12.5, "tiny": 0.00005, "neg": -3.14159})
    assert record["whole"] == 100 and isinstance(record["whole"], int)
    assert record["frac"] == {"__extn": {"fn": "decimal", "arg": "12.5000"}}
    assert record["tiny"] == {"__extn": {"fn": "decimal", "arg": "0.0000"}}  # half-even rounding to 4 places
    assert record["neg"] == {"__extn": {"fn": "decimal", "arg": "-3.1416"}}


def test_unrepresentable_numbers_become_strings() -> None:
    big = 2**70
    record, _ = E.convert_args({"big": big, "small": -(2**64), "max": 2**63 - 1, "inf": float("inf"),
                                "nan": float("nan"), "hugefloat": 1e300, "hugefrac": 1e16 + 0.5})
    assert record["big"] == str(big) and record["small"] == str(-(2**64))
    assert record["max"] == 2**63 - 1
    assert record["inf"] == "inf" and record["nan"] == "nan"
    assert record["hugefloat"] == "1e+300"  # integral but outside Long
    assert isinstance(record["hugefrac"], int | str)


def test_mixed_arrays_become_sets_of_canonical_json_strings() -> None:
    record, _ = E.convert_args({"mixed": [1, "a", {"b": True}, 2.5], "same": ["x", "y"]})
    assert record["mixed"] == ["1", "a", '{"b":true}', "2.5"]
    assert record["same"] == ["x", "y"]
    # A fractional number is its JSON text as any other item is (docs: `[1, 2.5]` → `["1", "2.5"]`), also
    # nested, not the text of the decimal's string form ('"2.5000"', which no policy would think to write).
    record, _ = E.convert_args({"amounts": [1, 2.5], "nested": [{"x": 0.125}, "a", [1.5]]})
    assert record["amounts"] == ["1", "2.5"]
    assert record["nested"] == ['{"x":0.125}', "a", "[1.5]"]


def test_entity_and_extension_escapes_are_dropped() -> None:
    record, truncated = E.convert_args({"sku": {"__entity": {"type": "Agent", "id": "admin"}},
                                        "__extn": {"fn": "ip", "arg": "10.0.0.1"}, "ok": "yes"})
    assert record == {"sku": {}, "ok": "yes"}
    assert truncated is True


def test_depth_is_bounded() -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(20):
        deep = {"n": deep}
    record, truncated = E.convert_args(deep, E.Bounds(max_depth=4))
    assert truncated is True
    depth, node = 0, record
    while isinstance(node, dict) and "n" in node:
        node, depth = node["n"], depth + 1
    assert depth <= 4


def test_huge_arrays_keys_and_strings_are_bounded() -> None:
    bounds = E.Bounds(max_items=10, max_keys=5, max_str=16)
    record, truncated = E.convert_args({"items": list(range(10_000)), "s": "x" * 1000,
                                        "obj": {f"k{i}": i for i in range(100)}}, bounds)
    assert truncated is True
    assert len(record["items"]) == 10
    assert record["s"] == "x" * 16
    assert len(record["obj"]) == 5


def test_non_object_arguments_give_an_empty_record() -> None:
    assert E.convert_args([1, 2]) == ({}, True)
    assert E.convert_args(None) == ({}, False)


def test_task_totals_round_up_and_skip_non_numbers() -> None:
    task = E.task_record({"calls": 3, "totals": {"amount": 9999.01, "bad": "x", "flag": True},
                          "seen_tools": ["b", "a", "a"]})
    assert task == {"calls": 3, "totals": {"amount": 10000}, "seen_tools": ["a", "b"]}
    assert E.task_record("nope") is None


def test_built_request_conforms_to_the_shipped_schema() -> None:
    """What entities.py builds must type-check against policies/schema.cedarschema (request validation)."""
    principal = Principal("p", "iss", "p", {"tenant": "acme", "groups": ["a", "b"], "clearance": "restricted"},
                          chain=(Actor("q", {"tenant": "acme", "trust": "low"}), Actor("r")))
    tool = ToolInfo("payments", "pay", sensitivity="confidential", leaves_org=True)
    facts = E.CallFacts(args={"account": "x", "amount": 10, "memo": "m"}, environment="dev",
                        task={"calls": 1, "totals": {"amount": 10}, "seen_tools": ["payments/pay"]},
                        now=dt.datetime(2025, 1, 6, 9, tzinfo=dt.UTC))
    ctx = E.context(principal, facts, "none")
    assert ctx["time"] == {"hour": 9, "weekday": 1} and ctx["chain"] == ["q", "r"] and ctx["chain_depth"] == 2
    ents = cedarpy.Entities.from_json_str(json.dumps(E.entities(principal, tool)), SCHEMA)
    policy = cedarpy.PolicySet.from_str('@id("all")\npermit(principal, action, resource);')
    for member in ("p", "q", "r"):
        result = cedarpy.is_authorized(E.request(member, "call_tool", tool, ctx), policy, ents, schema=SCHEMA)
        assert result.allowed, result.diagnostics.errors


def test_entity_cache_is_bounded_and_reuses_handles() -> None:
    from gateway.authz.evaluate import EntityCache
    cache = EntityCache(size=2)
    texts = [json.dumps([{"uid": {"type": "Server", "id": str(i)}, "attrs": {}, "parents": []}]) for i in range(3)]
    first = cache.parse(texts[0])
    assert cache.parse(texts[0]) is first
    cache.parse(texts[1])
    cache.parse(texts[2])
    assert len(cache) == 2 and cache.parse(texts[0]) is not first


_KEYS = st.sampled_from(["a", "b", "__entity", "__extn", "__expr", "x" * 5]) | st.text(max_size=6)
_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_KEYS, inner, max_size=5),
                       max_leaves=12)


@settings(max_examples=400)
@given(st.none() | st.integers() | st.dictionaries(_KEYS, _VALUES, max_size=6),
       st.builds(E.Bounds, max_depth=st.integers(1, 4), max_items=st.integers(1, 4), max_keys=st.integers(1, 5),
                 max_str=st.integers(0, 6)))
def test_the_quick_truncation_check_agrees_with_the_conversion(args: Any, bounds: E.Bounds) -> None:
    """Decision records call args_truncated on every call; replay must see what the conversion saw."""
    assert E.args_truncated(args, bounds) is E.convert_args(args, bounds)[1]
