"""JSON Schema → Cedar types for `policy schema`."""

from __future__ import annotations

import json

import cedarpy
from authz_helpers import SHIPPED

from gateway.authz.entities import convert_args
from gateway.authz.schemagen import BEGIN, END, apply_block, cedar_type, record_type, schema_from_input_schemas


def test_json_schema_types() -> None:
    assert cedar_type({"type": "string"}) == "String"
    assert cedar_type({"type": ["integer", "null"]}) == "Long"
    assert cedar_type({"type": "number"}) == "Long"
    assert cedar_type({"type": "array", "items": {"type": "boolean"}}) == "Set<Bool>"
    assert cedar_type({"type": "array"}) is None
    assert cedar_type({"enum": ["a", "b"]}) == "String"
    assert cedar_type({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "String"
    assert cedar_type({"anyOf": [{"type": "string"}, {"type": "integer"}]}) is None
    assert cedar_type({"type": "object", "properties": {"a-b": {"type": "string"}}}) == '{ "a-b"?: String }'
    deep: dict[str, object] = {"type": "string"}
    for _ in range(10):
        deep = {"type": "object", "properties": {"x": deep}}
    assert "String" not in (cedar_type(deep) or "")


def test_conflicting_argument_types_are_left_out() -> None:
    block = schema_from_input_schemas({
        "a": [{"name": "t", "inputSchema": {"properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}}],
        "b": [{"name": "u", "inputSchema": {"properties": {"id": {"type": "integer"}}}}],
    })
    assert '"n"?: Long,' in block and '"id"?:' not in block.split("type Args")[1]
    assert '// "id" left out: conflicting types (a/t: String; b/u: Long)' in block
    full = apply_block((SHIPPED / "schema.cedarschema").read_text(), block)
    assert full.count(BEGIN) == 1 and full.count(END) == 1
    cedarpy.Schema.from_str(full)  # still a valid schema


def test_apply_block_appends_when_markers_are_missing() -> None:
    assert apply_block("entity A;", "X").endswith("\n\nX\n")


def test_local_refs_consts_and_untypable_arguments() -> None:
    """Tool input schemas made from models (pydantic, FastMCP) type nested objects by `$ref` to `$defs`: those
    arguments must be typed like inline ones, not left out of `Args` (a policy reading them would not validate)."""
    item = {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}
    schema = {"type": "object", "$defs": {"Item": item}, "definitions": {"Mode": {"enum": [1, 2]}},
              "properties": {
                  "item": {"$ref": "#/$defs/Item"},
                  "maybe": {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}]},
                  "wrapped": {"allOf": [{"$ref": "#/$defs/Item"}], "description": "older pydantic"},
                  "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                  "mode": {"$ref": "#/definitions/Mode"},
                  "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
                  "choice": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                  "remote": {"$ref": "https://example.com/schema.json"},
                  "missing": {"$ref": "#/$defs/Nope"},
                  "loop": {"$ref": "#/properties/loop"},
                  # Not an index: str.isdigit() took '²' and int() raised, stopping `customs policy schema`.
                  "odd": {"$ref": "#/properties/kind/oneOf/²"}}}
    block = schema_from_input_schemas({"shop": [{"name": "order", "inputSchema": schema}]})
    args = block.split("type Args")[1]
    record = '{ "qty"?: Long, "sku"?: String }'
    for line in (f'"item"?: {record},', f'"maybe"?: {record},', f'"wrapped"?: {record},',
                 f'"items"?: Set<{record}>,', '"mode"?: Long,', '"kind"?: String,'):
        assert line in args, line
    for name in ("choice", "remote", "missing", "loop", "odd"):
        assert f'"{name}"?:' not in args
        assert f'// "{name}" left out: no single Cedar type (shop/order)' in args
    cedarpy.Schema.from_str(apply_block((SHIPPED / "schema.cedarschema").read_text(), block))


def test_an_argument_one_tool_cannot_type_is_left_out_for_all() -> None:
    block = schema_from_input_schemas({
        "a": [{"name": "t", "inputSchema": {"properties": {"id": {"type": "string"}}}}],
        "b": [{"name": "u", "inputSchema": {"properties": {"id": {"oneOf": [{"type": "string"},
                                                                           {"type": "integer"}]}}}}],
    })
    args = block.split("type Args")[1]
    assert '"id"?:' not in args
    assert '// "id" left out: conflicting types (a/t: String; b/u: no single Cedar type)' in args


def test_schema_types_exactly_as_deep_as_arguments_are_converted() -> None:
    """A field is typed only when the argument conversion keeps it: deeper, a policy would validate against a
    value that never arrives; shallower, a policy could not read a value that does."""
    for levels in range(1, 12):
        schema: dict[str, object] = {"type": "string"}
        value: object = "leaf"
        for _ in range(levels):
            schema = {"type": "object", "properties": {"x": schema}}
            value = {"x": value}
        converted, _ = convert_args({"a": value})
        kept = "leaf" in json.dumps(converted)
        typed = "String" in (record_type({"a": schema}) or "")
        assert kept == typed, (levels, kept, typed)


def test_a_null_among_enum_values_is_the_null_alternative() -> None:
    """`enum: ["a", "b", null]` (a nullable enum, as zod and others write it) had no type, so the argument was
    left out of Args, although null is dropped by the conversion as in `type: ["string", "null"]`."""
    assert cedar_type({"enum": ["a", "b", None]}) == "String"
    assert cedar_type({"enum": [1, None]}) == "Long"
    assert cedar_type({"enum": [None]}) is None and cedar_type({"const": None}) is None
    assert cedar_type({"enum": [1, "a", None]}) is None
