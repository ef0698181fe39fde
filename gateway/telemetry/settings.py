"""Resolve telemetry settings: the `telemetry:` config section first, then the standard `OTEL_*` variables.

Precedence for each setting: an explicit config value, else the OpenTelemetry environment variable,
else the default (tracing off, service name "customs", parent-based always-on sampling). Nothing
here does I/O; `Telemetry` and `Metrics` build exporters from the resolved values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util.re import parse_env_headers

from gateway.config.model import TelemetryConfig

log = logging.getLogger("customs.telemetry")
DEFAULT_SERVICE_NAME = "customs"
# OTEL_{SIGNAL}_EXPORTER values understood here (metrics: `prometheus` and `console` export nothing over OTLP,
# `/metrics` is the config's); any other (zipkin, jaeger, logging ...) is warned about and otherwise ignored.
KNOWN_EXPORTERS = {"traces": frozenset({"otlp", "console", "none"}),
                   "metrics": frozenset({"otlp", "console", "none", "prometheus"})}


@dataclass(frozen=True)
class TraceSettings:
    """What the tracer provider needs. `enabled` is False when nothing would receive spans."""

    service_name: str
    endpoint: str | None  # full OTLP/HTTP traces URL (…/v1/traces)
    console: bool
    sampler: Sampler
    headers: dict[str, str] = field(default_factory=dict)
    capture_args: bool = False
    trust_inbound: bool = True
    value_limit: int | None = None  # longest string attribute value (OTEL_[SPAN_]ATTRIBUTE_VALUE_LENGTH_LIMIT)

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None or self.console


@dataclass(frozen=True)
class MetricSettings:
    service_name: str
    prometheus: bool
    endpoint: str | None  # full OTLP/HTTP metrics URL (…/v1/metrics)
    headers: dict[str, str] = field(default_factory=dict)
    interval_ms: int = 60_000

    @property
    def enabled(self) -> bool:
        return self.prometheus or self.endpoint is not None


def signal_url(base: str, signal: str) -> str:
    """A base OTLP endpoint (`http://host:4318`) → the signal URL (`http://host:4318/v1/traces`).

    A URL that already ends in the signal path is kept as is.
    """
    suffix = f"/v1/{signal}"
    path = urlsplit(base).path.rstrip("/")
    if path.endswith(suffix):
        return base
    return base.rstrip("/") + suffix


def exporters(env: Mapping[str, str], signal: str) -> frozenset[str]:
    """OTEL_{SIGNAL}_EXPORTER: a comma-separated list (`otlp,console`), `otlp` when unset or empty."""
    names = {name.strip().lower() for name in env.get(f"OTEL_{signal.upper()}_EXPORTER", "").split(",")}
    return frozenset(names - {""}) or frozenset({"otlp"})


def _warn_unknown_exporters(env: Mapping[str, str], signal: str) -> None:
    """Say which OTEL_{SIGNAL}_EXPORTER names are not implemented: `zipkin` alone turned export off unsaid."""
    unknown = sorted(exporters(env, signal) - KNOWN_EXPORTERS[signal])
    if unknown:
        log.warning("OTEL_%s_EXPORTER names %s, which the gateway does not implement: ignored (it knows %s)",
                    signal.upper(), ", ".join(unknown), ", ".join(sorted(KNOWN_EXPORTERS[signal])))


def _signal_endpoint(explicit: str | None, env: Mapping[str, str], signal: str) -> str | None:
    if explicit:
        return signal_url(explicit, signal)
    if "otlp" not in exporters(env, signal):  # `none`, or only `console`
        return None
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific  # per the spec, the signal-specific variable is already the full URL
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return signal_url(base, signal) if base else None


def _headers(env: Mapping[str, str], signal: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS in place of OTEL_EXPORTER_OTLP_HEADERS, as the SDK's exporters read them:
    not merged, or a credential meant for the generic collector would go to a signal's own one too."""
    value = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS", env.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    return dict(parse_env_headers(value, liberal=True))


def unsupported_protocol(env: Mapping[str, str], signal: str) -> str | None:
    """OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL when it asks for something other than http/protobuf, the one
    protocol the gateway exports (an operator who set `grpc` must hear that spans go elsewhere than meant)."""
    value = (env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "").strip()
             or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()).lower()
    return value if value and value != "http/protobuf" else None


def delta_preference(env: Mapping[str, str]) -> str | None:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE when it asks for deltas (`delta`, `lowmemory`): the SDK's
    exporter applies it to the SDK instruments, but the per-call aggregates (aggregate.py) stay cumulative."""
    value = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "").strip().lower()
    return value if value in ("delta", "lowmemory") else None


def service_name(config: TelemetryConfig, env: Mapping[str, str]) -> str:
    """The config's, else OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES (the spec's order),
    else "customs"."""
    resource = parse_env_headers(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), liberal=True)
    return (config.service_name or env.get("OTEL_SERVICE_NAME", "").strip()
            or resource.get("service.name", "").strip() or DEFAULT_SERVICE_NAME)


def _ratio(raw: str | None, default: float = 1.0) -> tuple[float, bool]:
    """The sampling ratio and whether `raw` was one (unset counts as one: the default); out of range is clamped,
    what is no number (`10%`, `nan`) is the default."""
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default, False
    if math.isnan(value):
        return default, False
    return min(max(value, 0.0), 1.0), 0.0 <= value <= 1.0


def env_sampler(env: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG; unknown names fall back to the SDK default."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio, ratio_ok = _ratio(raw)
    if not ratio_ok and name.endswith("traceidratio"):  # `10%` (meant 0.1) would sample every request unsaid
        log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio from 0 to 1: using %s", raw, ratio)
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name and name not in samplers:  # a misspelt name would sample every request unsaid
        log.warning("OTEL_TRACES_SAMPLER=%s is not a sampler the gateway implements (%s): using parentbased_always_on",
                    name, ", ".join(samplers))
    return samplers.get(name, ParentBased(ALWAYS_ON))


def trace_settings(config: TelemetryConfig, env: Mapping[str, str]) -> TraceSettings:
    traces = config.traces
    _warn_unknown_exporters(env, "traces")
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" and traces.endpoint is None and not traces.console:
        endpoint, console = None, False
    else:
        endpoint = _signal_endpoint(traces.endpoint, env, "traces")
        # An explicit `console:` (false too) decides, as every setting the section gives; else the variable's
        # list does, also next to an endpoint the section sets (`otlp,console`: both).
        console = traces.console if "console" in traces.model_fields_set else "console" in exporters(env, "traces")
    if "sample_ratio" in traces.model_fields_set:
        sampler: Sampler = ParentBased(TraceIdRatioBased(traces.sample_ratio))
    else:
        sampler = env_sampler(env)
    return TraceSettings(service_name=service_name(config, env), endpoint=endpoint, console=console,
                         sampler=sampler, headers=_headers(env, "traces"), capture_args=traces.capture_args,
                         trust_inbound=traces.trust_inbound, value_limit=value_length_limit(env))


def value_length_limit(env: Mapping[str, str]) -> int | None:
    """OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT (the SDK's SpanLimits): string
    attribute values of exported spans are cut to that many characters. None (the SDK's default): no limit. A value
    that is no whole number of 0 or more is warned about and ignored (the SDK refuses to start)."""
    for name in ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if raw.isascii() and raw.isdigit():
            return int(raw)
        log.warning("%s=%r is not a whole number of 0 or more: ignored", name, raw[:40])
    return None


def metric_settings(config: TelemetryConfig, env: Mapping[str, str]) -> MetricSettings:
    metrics = config.metrics
    _warn_unknown_exporters(env, "metrics")
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    endpoint = None if disabled and metrics.otlp_endpoint is None else _signal_endpoint(
        metrics.otlp_endpoint, env, "metrics")
    interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses (serve stopped with a traceback).
    counted = interval.isascii() and interval.isdigit() and int(interval) > 0
    return MetricSettings(service_name=service_name(config, env), prometheus=metrics.prometheus, endpoint=endpoint,
                          headers=_headers(env, "metrics"), interval_ms=int(interval) if counted else 60_000)
