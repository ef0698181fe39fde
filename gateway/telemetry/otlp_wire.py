"""Protobuf wire bytes of the OTLP fields the exporter child writes itself: a span's head and scalar attributes.

The generated classes (upb) cost ~1.2 µs to build and serialize a span's eight leading fields and ~1.5 µs
for a `KeyValue` whose value is new (a request id, a digest, a timing), on every span. These functions
write the same bytes with a few joins: the protobuf encoding rules (protobuf.dev/programming-guides/encoding)
for exactly the field types involved: varints, fixed64, doubles and UTF-8 strings. Proto3 fields without
presence are left out at their default (zero, empty), a oneof member (`AnyValue`'s) is written even then,
as upb writes them. Anything else (arrays, maps, bytes, ints outside int64, strings that are not UTF-8)
returns None and goes through the generated classes; tests/telemetry/test_otlp_encode.py compares every
byte against the SDK's encoding.
"""

from __future__ import annotations

import struct
from typing import Any

_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_INT64_MIN, _INT64_LIMIT, _UINT64 = -(2**63), 2**63, 2**64 - 1
# Span field keys (number << 3 | wire type): trace_id 1, span_id 2, trace_state 3, parent_span_id 4 (bytes,
# strings: 2); name 5 (2); kind 6 (varint: 0); start 7, end 8 (fixed64: 1); attributes 9 (2).
_TRACE_ID, _SPAN_ID, _STATE, _PARENT = b"\x0a\x10", b"\x12\x08", b"\x1a", b"\x22\x08"
_NAME, _KIND, _START, _END, ATTRIBUTES = b"\x2a", b"\x30", b"\x39", b"\x41", b"\x4a"
# KeyValue: key 1, value 2 (both length-delimited). AnyValue's oneof: string 1, bool 2, int 3, double 4.
_KEY, _VALUE = b"\x0a", b"\x12"
_STRING, _FALSE, _TRUE, _INT, _DOUBLE_KEY = b"\x0a", b"\x10\x00", b"\x10\x01", b"\x18", b"\x21"


# The one-byte varints (0-127): most lengths and kinds; a table lookup instead of a call and a new bytes object.
_SMALL = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """A non-negative int as a protobuf base-128 varint (protobuf.dev/programming-guides/encoding/#varints)."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def framed(key: bytes, body: bytes) -> bytes:
    """A length-delimited field: its key, the body's length, the body."""
    size = len(body)
    return b"".join((key, _SMALL[size] if size < 0x80 else varint(size), body))


def name_and_kind(name: str, kind: int) -> bytes | None:
    """A span's `name` and `kind` fields (kind as the proto's number); None for a name that is not UTF-8."""
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        return None
    return (framed(_NAME, encoded) if encoded else b"") + (_KIND + varint(kind) if kind else b"")


def span_head(trace_id: int, span_id: int, state: str, parent_id: int | None, name_kind: bytes,
              start: int, end: int) -> bytes:
    """Span fields 1 to 8 in field order, as the generated `Span` class serializes them.

    Raises (OverflowError, struct.error) where the generated class raises: an id too wide, a negative time."""
    parts = [_TRACE_ID, trace_id.to_bytes(16, "big"), _SPAN_ID, span_id.to_bytes(8, "big")]
    if state:
        parts.append(framed(_STATE, state.encode()))
    if parent_id is not None:
        parts += (_PARENT, parent_id.to_bytes(8, "big"))
    parts.append(name_kind)
    if start:
        parts += (_START, _FIXED64.pack(start))
    if end:
        parts += (_END, _FIXED64.pack(end))
    return b"".join(parts)


def scalar_pair(key: str, value: Any) -> bytes | None:
    """One entry of a span's `attributes` field (its key included) for a str, bool, int64 or float value;
    None for any other value, or a key or string that is not UTF-8 (the generated classes decide those)."""
    kind = type(value)
    small = _SMALL
    try:
        if kind is str:
            encoded = value.encode()
            size = len(encoded)
            value_bytes = b"".join((_STRING, small[size] if size < 0x80 else varint(size), encoded))
        elif kind is bool:
            value_bytes = _TRUE if value else _FALSE
        elif kind is int:
            if not _INT64_MIN <= value < _INT64_LIMIT:
                return None
            value_bytes = _INT + varint(value & _UINT64)  # two's complement: a negative int takes ten bytes
        elif kind is float:
            value_bytes = _DOUBLE_KEY + _DOUBLE.pack(value)
        else:
            return None
        key_bytes = key.encode()
    except UnicodeEncodeError:
        return None
    # framed(ATTRIBUTES, framed(_KEY, key) + framed(_VALUE, value)), with the lengths' usual one byte looked up.
    key_size, value_size = len(key_bytes), len(value_bytes)
    pair = b"".join((_KEY, small[key_size] if key_size < 0x80 else varint(key_size), key_bytes,
                     _VALUE, small[value_size] if value_size < 0x80 else varint(value_size), value_bytes))
    size = len(pair)
    return b"".join((ATTRIBUTES, small[size] if size < 0x80 else varint(size), pair))
