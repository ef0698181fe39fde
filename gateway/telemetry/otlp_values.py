"""The SDK's rules for attribute values, as the exporter child applies them: cleaning, count limits, `AnyValue`.

What `BoundedAttributes` and the OTLP exporter's `_encode_value` do to a span's attributes, in one pass
(`otlp_encode.py` uses these for everything its wire shortcuts do not cover); tests/telemetry/test_otlp_encode.py
compares the results with the SDK's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList


def _printable(value: Any) -> bool:
    """The SDK's `_is_non_custom_str`: str() of an object with neither __str__ nor __repr__ is meaningless."""
    kind: Any = type(value)
    return kind.__str__ is not object.__str__ or kind.__repr__ is not object.__repr__


def clean_keys(attributes: Mapping[Any, Any]) -> dict[str, Any]:
    """The keys `_clean_attribute_value` keeps for a mapping: no empty key, others as str (values untouched)."""
    cleaned: dict[str, Any] = {}
    for key, value in attributes.items():
        if not key:
            continue
        if not isinstance(key, str):
            if not _printable(key):
                continue
            key = str(key)
        cleaned[key] = value
    return cleaned


def bounded(attributes: Mapping[Any, Any], limit: int | None) -> tuple[dict[str, Any], int]:
    """What `BoundedAttributes(limit, attributes)` keeps, and its `dropped` count."""
    cleaned = clean_keys(attributes)
    dropped = len(attributes) - len(cleaned)
    if limit is not None and len(cleaned) > limit:
        # It keeps inserting and evicts the oldest once full: the last `limit` pairs survive.
        dropped += len(cleaned) - limit
        cleaned = dict(list(cleaned.items())[-limit:])
    return cleaned, dropped


def any_value(value: Any) -> AnyValue:
    """The SDK's `_clean_attribute_value` followed by its `_encode_value`, in one pass.

    Raises where the SDK's encoder raises (an int outside int64, a lone surrogate).
    """
    if value is None:
        return AnyValue()
    if isinstance(value, bool):  # before int: bool is an int
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[any_value(item) for item in value]))
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(
            values=[KeyValue(key=key, value=any_value(item)) for key, item in clean_keys(value).items()]))
    # Anything else the SDK turns into its str(), or drops to an empty value when that would be meaningless.
    return AnyValue(string_value=str(value)) if _printable(value) else AnyValue()
