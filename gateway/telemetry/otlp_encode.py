"""Encode wire spans straight into an OTLP `ExportTraceServiceRequest`, as the SDK's exporter would encode them.

The SDK path (`spans.readable()` → `ReadableSpan` → `encode_spans`) builds SpanContext, TraceState,
BoundedAttributes, Link and Status objects for every span and walks each attribute through the
SDK's cleaning and its encoder's isinstance chain into new messages: about 100 µs a span in the
exporter child. Here the tuples go directly into the generated protobuf classes. The rules are the
SDK's — BoundedAttributes' cleaning and count limit, `_encode_value`'s value mapping, `_span_flags`,
the span-kind and status mappings — and tests/telemetry/test_otlp_encode.py compares both paths
message for message.

Most (key, value) pairs repeat from call to call (method, tool, principal, decision, upstream), so
an encoder keeps their `KeyValue` messages; pairs unique to a call (request ids, digests) and
floats (timings) are encoded each time.

`serialize` (what the child sends) writes the same bytes as `encode(...).SerializeToString()` without
building the request: copying the cached `KeyValue`s into each span (upb copies a message on `extend`)
was about half of encoding. There each cached pair is kept serialized; a span is its leading fields and
its new scalar pairs written by `otlp_wire`, its other pairs by the generated classes, then its status and
flags (the field order the generated class writes); a shared dict (`attributes.SHARED`...) is serialized
once a batch; spans, scope and resource are framed as protobuf frames any length-delimited field (tag,
varint length, bytes). Spans with links, attribute sets the SDK would bound or whose keys it would
convert, and deferred parts giving a key twice take the message path.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags, Status
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import SpanKind, StatusCode, TraceState

from gateway.telemetry.attributes import DEFERRED, FACTS, PEER, SHARED, WHO, built, expand
from gateway.telemetry.otlp_values import any_value, bounded
from gateway.telemetry.otlp_wire import ATTRIBUTES, framed, name_and_kind, scalar_pair, span_head, varint
from gateway.telemetry.spans import SCOPE, SPAN_ATTRIBUTE_LIMIT, WireContext, WireSpan

log = logging.getLogger("customs.telemetry")

CACHE_LIMIT = 4096  # cached pairs; past it the cache starts over (unique values would otherwise grow it forever)

# By name, not by arithmetic: the SDK maps each API enum member to the proto member of the same name.
_KINDS = {kind.value: Span.SpanKind.Value(f"SPAN_KIND_{kind.name}") for kind in SpanKind}
_STATUS_CODES = {code.value: Status.StatusCode.Value(f"STATUS_CODE_{code.name}") for code in StatusCode}
_ERROR = StatusCode.ERROR.value
# The SDK's `_span_flags`: whether the parent (or linked) context was remote, never the trace flags.
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def _tag(message: Any, field: str) -> bytes:
    """The key of a length-delimited (wire type 2) field, its number read from the generated class."""
    return varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_RESOURCE_SPANS = _tag(ExportTraceServiceRequest, "resource_spans")
_SCOPE_SPANS = _tag(ResourceSpans, "scope_spans")
_SPANS = _tag(ScopeSpans, "spans")


_LOOKED_UP = frozenset({str, int, bool, tuple})


def _cacheable(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return True
    # Not floats (-0.0 == 0.0 would share an entry), nor tuples holding numbers (True == 1 == 1.0).
    return kind is tuple and all(type(item) is str for item in value)


class OtlpEncoder:
    """Wire spans → `ExportTraceServiceRequest`, for one resource and instrumentation scope.

    Owns the caches (of KeyValue messages and trace-state headers): one encoder per exporter process.
    """

    def __init__(self, resource: Mapping[str, Any], scope: SdkScope = SCOPE) -> None:
        self._pairs: dict[tuple[str, type, Any], KeyValue] = {}
        self._serialized: dict[tuple[str, type, Any], bytes] = {}  # the same pairs, as a span's attributes field
        self._tails: dict[tuple[int, Any, int], bytes] = {}  # status and flags, serialized
        self._names: dict[tuple[str, int], bytes] = {}  # name and kind fields, serialized
        self._states: dict[tuple[tuple[str, str], ...], str] = {}
        # The SDK encodes resource and scope attributes without a count limit and without a dropped count.
        self._resource = Resource(attributes=self._attributes(resource, None)[0])
        self._scope = InstrumentationScope(name=scope.name, version=scope.version or "",
                                           attributes=self._attributes(dict(scope.attributes or {}), None)[0])
        self._scope_schema = scope.schema_url or ""
        # What comes before and after the spans in a request, serialized once.
        self._resource_head = ResourceSpans(resource=self._resource).SerializeToString()
        self._scope_head = ScopeSpans(scope=self._scope).SerializeToString()
        self._scope_tail = ScopeSpans(schema_url=self._scope_schema).SerializeToString()

    def encode(self, spans: Sequence[WireSpan]) -> ExportTraceServiceRequest:
        """One export request: the resource, the scope, the spans in the order given."""
        request = ExportTraceServiceRequest()
        if not spans:
            return request  # as encode_spans([]): no resource group at all
        group: ResourceSpans = request.resource_spans.add(resource=self._resource)
        scope_spans: ScopeSpans = group.scope_spans.add(scope=self._scope, schema_url=self._scope_schema)
        add = scope_spans.spans.add
        for span in spans:
            self._span(add(), span)
        return request

    def serialize(self, spans: Sequence[WireSpan]) -> bytes:
        """`encode(spans).SerializeToString()`, the same bytes, without building the request's messages."""
        if not spans:
            return b""
        # A shared dict's pairs, serialized once a batch: the gateway ships a dict many spans share once a batch,
        # and unmarshalling gives those spans one object. By identity: every span, so every dict, lives until the end.
        shared: dict[int, tuple[bytes, Collection[str]] | None] = {}
        parts = []
        for span in spans:
            parts.append(framed(_SPANS, self._span_bytes(span, shared)))
        scope = b"".join((self._scope_head, *parts, self._scope_tail))
        return framed(_RESOURCE_SPANS, self._resource_head + framed(_SCOPE_SPANS, scope))

    def _span_bytes(self, span: WireSpan, shared: dict[int, tuple[bytes, Collection[str]] | None]) -> bytes:
        """One span's fields; the message path for what these bytes do not cover (links, odd keys, over the limit)."""
        name, kind, context, parent, start, end, attributes, links, (code, text) = span
        if links:
            return self._span_message(span)
        head = self._head(name, kind, context, parent, start, end)
        if head is None:
            return self._span_message(span)
        parts = [head]
        if attributes and not self._attributes_into(parts, attributes, shared):
            return self._span_message(span)
        parts.append(self._tail(code, text, _REMOTE if parent is not None and parent[2] else _LOCAL))
        return b"".join(parts)

    def _head(self, name: str, kind: int, context: WireContext, parent: WireContext | None, start: int,
              end: int) -> bytes | None:
        trace_id, span_id, _, _, state = context
        name_kind = self._names.get((name, kind))
        if name_kind is None:
            if (name_kind := name_and_kind(name, _KINDS[kind])) is None:
                return None
            if len(self._names) >= CACHE_LIMIT:
                self._names.clear()
            self._names[(name, kind)] = name_kind
        return span_head(trace_id, span_id, self._trace_state(state) if state else "",
                         parent[1] if parent is not None else None, name_kind, start, end)

    def _attributes_into(self, parts: list[bytes], attributes: dict[str, Any],
                         shared: dict[int, tuple[bytes, Collection[str]] | None]) -> bool:
        """Append the span's attribute pairs as `expand(attributes)` orders them; False where the message path
        must decide (a key it would convert, more pairs than the limit, a key given twice)."""
        if FACTS not in attributes and SHARED not in attributes and WHO not in attributes and PEER not in attributes:
            # By identity, like a shared part: spans may share the dict itself (each identify span has the principal's).
            entry = shared.get(id(attributes))
            if entry is None:
                if id(attributes) in shared:
                    return False
                entry = shared[id(attributes)] = self._plain_pairs(attributes)
                if entry is None:
                    return False
            parts.append(entry[0])
            return True
        cache = self._serialized
        if len(attributes) == 1:  # one deferred part alone (the authorize and credential spans): no key twice
            (value,) = attributes.values()
            entry = self._part(value, shared)
            if entry is None or len(entry[1]) > SPAN_ATTRIBUTE_LIMIT:
                return False
            parts.append(entry[0])
            return True
        keys: set[str] = set()
        for key, value in attributes.items():
            if key in DEFERRED:
                entry = self._part(value, shared)
                if entry is None or not keys.isdisjoint(entry[1]):
                    return False  # a key given twice: expand keeps the first place and the last value
                keys.update(entry[1])
                parts.append(entry[0])
            else:
                if key in keys:
                    return False
                kind_of = type(value)
                if (kind_of is str or kind_of is int or kind_of is bool) and (
                        pair := cache.get((key, kind_of, value))) is not None:
                    pass
                elif (pair := self._pair(key, value)) is None:
                    return False
                keys.add(key)
                parts.append(pair)
        return len(keys) <= SPAN_ATTRIBUTE_LIMIT

    def _plain_pairs(self, attributes: dict[str, Any]) -> tuple[bytes, Collection[str]] | None:
        """A span's own attributes (no deferred part), serialized; None where the message path must decide."""
        if len(attributes) > SPAN_ATTRIBUTE_LIMIT:
            return None
        cache = self._serialized
        pairs = []
        for key, value in attributes.items():
            kind_of = type(value)  # `_pair`'s cache lookup, inline (as in `_pairs_of`)
            if (kind_of is str or kind_of is int or kind_of is bool) and (
                    pair := cache.get((key, kind_of, value))) is not None:
                pairs.append(pair)
            elif (pair := self._pair(key, value)) is None:
                return None
            else:
                pairs.append(pair)
        return b"".join(pairs), attributes.keys()

    def _part(self, value: Any, shared: dict[int, tuple[bytes, Collection[str]] | None]) -> tuple[
            bytes, Collection[str]] | None:
        """A deferred part's pairs and keys: a shared dict's from the batch's memo, facts built and serialized."""
        if type(value) is not dict:
            return self._pairs_of(built(value))
        entry = shared.get(id(value))
        if entry is None and id(value) not in shared:
            entry = shared[id(value)] = self._pairs_of(value)
        return entry

    def _pairs_of(self, attributes: dict[str, Any]) -> tuple[bytes, Collection[str]] | None:
        """A deferred part's pairs, serialized, and its keys (unset values left out, as `expand` leaves them)."""
        pairs = []
        cache = self._serialized
        unset = False
        for key, value in attributes.items():
            kind_of = type(value)
            # `_pair`'s cache lookup, inline for the usual values: a call a pair is most of a hit's cost.
            if (kind_of is str or kind_of is int or kind_of is bool) and (
                    pair := cache.get((key, kind_of, value))) is not None:
                pairs.append(pair)
            elif value is None:
                unset = True
            elif (pair := self._pair(key, value)) is not None:
                pairs.append(pair)
            else:
                return None
        keys = frozenset(key for key, value in attributes.items() if value is not None) if unset else attributes.keys()
        return b"".join(pairs), keys

    def _pair(self, key: Any, value: Any) -> bytes | None:
        """One attribute pair, serialized (b"" for a value the SDK would drop); None for a key it would convert."""
        kind_of = type(value)
        cache = self._serialized
        if kind_of in _LOOKED_UP:
            # Only str, int, bool and all-str tuples are ever stored (`_cacheable`): True == 1 cannot collide.
            try:
                if (pair := cache.get((key, kind_of, value))) is not None:
                    return pair
            except TypeError:  # a tuple holding a list or mapping: no dict key (and never stored)
                pass
        if type(key) is not str or not key:  # a key the SDK would convert or drop
            return None
        pair = scalar_pair(key, value)
        if pair is None:
            key_value = self._key_value(key, value)
            if key_value is None:
                return b""
            pair = framed(ATTRIBUTES, key_value.SerializeToString())
        if _cacheable(value):
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[(key, kind_of, value)] = pair
        return pair

    def _tail(self, code: int, text: Any, flags: int) -> bytes:
        """Status and flags, serialized (the fields after the attributes): a handful of combinations in all."""
        key = (code, text if code == _ERROR and isinstance(text, str) else None, flags)
        tail = self._tails.get(key)
        if tail is None:
            status = Status(code=_STATUS_CODES[code])
            if code == _ERROR and isinstance(text, str) and text:
                status.message = text
            tail = Span(status=status, flags=flags).SerializeToString()
            if len(self._tails) >= CACHE_LIMIT:
                self._tails.clear()
            self._tails[key] = tail
        return tail

    def _span_message(self, span: WireSpan) -> bytes:
        out = Span()
        self._span(out, span)
        body: bytes = out.SerializeToString()
        return body

    def _span(self, out: Span, span: WireSpan) -> None:
        name, kind, context, parent, start, end, attributes, links, (code, text) = span
        trace_id, span_id, _, _, state = context
        out.trace_id = trace_id.to_bytes(16, "big")
        out.span_id = span_id.to_bytes(8, "big")
        if state:
            out.trace_state = self._trace_state(state)
        if parent is not None:
            out.parent_span_id = parent[1].to_bytes(8, "big")
        out.flags = _REMOTE if parent is not None and parent[2] else _LOCAL
        out.name = name
        out.kind = _KINDS[kind]
        out.start_time_unix_nano = start
        out.end_time_unix_nano = end
        if attributes:
            key_values, dropped = self._attributes(expand(attributes), SPAN_ATTRIBUTE_LIMIT)
            out.attributes.extend(key_values)
            out.dropped_attributes_count = dropped
        for link_context, link_attributes in links:
            self._link(out.links.add(), link_context, link_attributes)
        # The SDK always sets a status, so it is present even when UNSET: assigning the code (even 0) does that.
        status = out.status
        status.code = _STATUS_CODES[code]
        if code == _ERROR and isinstance(text, str) and text:  # Status() keeps a description only on ERROR
            status.message = text

    def _link(self, out: Span.Link, context: WireContext, attributes: Mapping[Any, Any]) -> None:
        # The SDK's encoder writes neither a link's trace state nor its trace flags: ids, attributes, flags.
        out.trace_id = context[0].to_bytes(16, "big")
        out.span_id = context[1].to_bytes(8, "big")
        if attributes:
            key_values, dropped = self._attributes(attributes, SPAN_ATTRIBUTE_LIMIT)
            out.attributes.extend(key_values)
            out.dropped_attributes_count = dropped
        out.flags = _REMOTE if context[2] else _LOCAL

    def _attributes(self, attributes: Mapping[Any, Any], limit: int | None) -> tuple[list[KeyValue], int]:
        """The KeyValues BoundedAttributes(limit) would keep and the SDK could encode, and its dropped count."""
        if limit is not None and len(attributes) > limit:
            return self._bounded(attributes, limit)
        key_values: list[KeyValue] = []
        pairs = self._pairs
        for key, value in attributes.items():
            if type(key) is not str or not key:  # a key the SDK would convert or drop
                return self._bounded(attributes, limit)
            kind = type(value)
            # The hot path, inlined (a call per attribute costs more than the lookup); misses go to _key_value.
            key_value = pairs.get((key, kind, value)) if kind is str or kind is int or kind is bool else None
            if key_value is None and (key_value := self._key_value(key, value)) is None:
                continue
            key_values.append(key_value)
        return key_values, 0

    def _bounded(self, attributes: Mapping[Any, Any], limit: int | None) -> tuple[list[KeyValue], int]:
        kept, dropped = bounded(attributes, limit)
        return [kv for kv in map(self._key_value, kept.keys(), kept.values()) if kv is not None], dropped

    def _key_value(self, key: str, value: Any) -> KeyValue | None:
        cacheable = _cacheable(value)
        if cacheable and (cached := self._pairs.get((key, type(value), value))) is not None:
            return cached
        try:
            key_value = KeyValue(key=key, value=any_value(value))
        except Exception as exc:  # the SDK drops (and logs) an attribute it cannot encode; the span still goes
            log.warning("span attribute %r not exportable (%s): dropped", key, exc)
            return None
        if cacheable:
            if len(self._pairs) >= CACHE_LIMIT:
                self._pairs.clear()
            # The type is part of the key: True == 1, and the two encode differently.
            self._pairs[(key, type(value), value)] = key_value
        return key_value

    def _trace_state(self, state: tuple[tuple[str, str], ...]) -> str:
        header = self._states.get(state)
        if header is None:
            # The API's TraceState validates (and may drop) entries exactly as the SDK path does; rare, so cached.
            header = ",".join(f"{key}={value}" for key, value in TraceState(list(state)).items())
            if len(self._states) >= CACHE_LIMIT:
                self._states.clear()
            self._states[state] = header
        return header
