"""Standard OTEL_* values the gateway does not implement are said at start-up, not silently ignored (issue 6).

OTEL_TRACES_EXPORTER=zipkin (or jaeger, an old habit) next to OTEL_EXPORTER_OTLP_ENDPOINT turned tracing off with
nothing in the log, and a misspelt OTEL_TRACES_SAMPLER sampled every request, both without a word, where the SDK
itself reports such values.
"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from gateway.config.model import TelemetryConfig
from gateway.telemetry.settings import metric_settings, trace_settings

BASE = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(("variable", "value"), [("OTEL_TRACES_EXPORTER", "zipkin"),
                                                 ("OTEL_TRACES_EXPORTER", "otlp,jaeger"),
                                                 ("OTEL_TRACES_SAMPLER", "parentbased_traceidratioo"),
                                                 ("OTEL_TRACES_SAMPLER", "xray")])
def test_an_unknown_trace_variable_value_is_warned_about(caplog: pytest.LogCaptureFixture, variable: str,
                                                         value: str) -> None:
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        trace_settings(TelemetryConfig(), {**BASE, variable: value})
    warned = warnings_of(caplog)
    assert len(warned) == 1 and variable in warned[0] and value.split(",")[-1] in warned[0], warned


def test_an_unknown_metrics_exporter_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        settings = metric_settings(TelemetryConfig(), {**BASE, "OTEL_METRICS_EXPORTER": "statsd"})
    assert settings.endpoint is None  # as before: only otlp exports over OTLP
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "OTEL_METRICS_EXPORTER" in warned[0] and "statsd" in warned[0], warned


def test_the_values_it_implements_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        for env in ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"},
                    {"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "Always_Off"},
                    {"OTEL_TRACES_EXPORTER": " Console ", "OTEL_TRACES_SAMPLER": ""}, {}):
            trace_settings(TelemetryConfig(), {**BASE, **env})
        for value in ("otlp", "prometheus", "none", "console", "otlp,prometheus"):
            metric_settings(TelemetryConfig(), {**BASE, "OTEL_METRICS_EXPORTER": value})
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("arg", ["10%", "5", "-0.1", "nan"])
def test_a_ratio_the_sampler_cannot_use_is_warned_about(caplog: pytest.LogCaptureFixture, arg: str) -> None:
    """OTEL_TRACES_SAMPLER_ARG=10% (meant 0.1) sampled every request, unsaid."""
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        trace_settings(TelemetryConfig(), {**BASE, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": arg})
        trace_settings(TelemetryConfig(), {**BASE, "OTEL_TRACES_SAMPLER": "traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": "0.25"})
        trace_settings(TelemetryConfig(), {**BASE, "OTEL_TRACES_SAMPLER": "always_on",
                                           "OTEL_TRACES_SAMPLER_ARG": arg})  # not a ratio sampler: not read
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "OTEL_TRACES_SAMPLER_ARG" in warned[0] and arg in warned[0], warned


def test_a_nan_ratio_does_not_stop_the_gateway() -> None:
    """OTEL_TRACES_SAMPLER_ARG=nan passed the clamp (comparisons with NaN are false) and TraceIdRatioBased(nan)
    raised ValueError while the settings were built, with any sampler or none: the gateway did not start."""
    settings = trace_settings(TelemetryConfig(), {**BASE, "OTEL_TRACES_SAMPLER_ARG": "nan"})
    assert settings.sampler.get_description() == ParentBased(ALWAYS_ON).get_description()


@pytest.mark.parametrize("interval", ["²", "٣", "-5", "0", "1.5e3", "soon"])
def test_an_export_interval_that_is_no_count_of_milliseconds_takes_the_default(interval: str) -> None:
    # str.isdigit() took '²' and '٣' (int() then raised at start-up: serve stopped with a traceback).
    settings = metric_settings(TelemetryConfig(), {"OTEL_METRIC_EXPORT_INTERVAL": interval})
    assert settings.interval_ms == 60_000
    assert metric_settings(TelemetryConfig(), {"OTEL_METRIC_EXPORT_INTERVAL": " 500 "}).interval_ms == 500
