"""JSON Schema → Cedar types for `policy schema`."""

from __future__ import annotations

import cedarpy
from authz_helpers import SHIPPED

from gateway.authz.schemagen import BEGIN, END, apply_block, cedar_type, schema_from_input_schemas


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
