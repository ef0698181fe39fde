"""`telemetry.traces.endpoint` and `telemetry.metrics.otlp_endpoint` are OTLP/HTTP base URLs: the gateway appends
`/v1/traces` or `/v1/metrics` (docs/tracing.md). One with a query or a fragment passed `config check`, and the path
went after it (`http://c:4318?k=v/v1/traces`): every export reached the collector's root and was refused, spans and
points lost. Each is a problem at its path now; a base URL with a path of its own (`/otlp`) stays valid."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.telemetry.settings import metric_settings, trace_settings

UPSTREAM = {"name": "a", "url": "http://127.0.0.1:9/mcp"}


def telemetry(path: str, url: str) -> dict[str, object]:
    section, key = path.split(".")
    return {"upstreams": [UPSTREAM], "telemetry": {section: {key: url}}}


@pytest.mark.parametrize("path", ["traces.endpoint", "metrics.otlp_endpoint"])
@pytest.mark.parametrize("url", ["http://127.0.0.1:4318?tenant=a", "http://127.0.0.1:4318/otlp#x",
                                 "http://127.0.0.1:4318/?"])
def test_an_otlp_base_url_with_a_query_or_fragment_is_a_problem_at_its_path(path: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(telemetry(path, url), env={})
    assert any(p.startswith(f"telemetry.{path}: ") and "query" in p for p in info.value.problems), info.value.problems


def test_a_base_url_with_a_path_gets_the_signal_path_appended() -> None:
    config = parse_config({"upstreams": [UPSTREAM], "telemetry": {
        "traces": {"endpoint": "https://collector.test/otlp/"},
        "metrics": {"otlp_endpoint": "https://collector.test/otlp"}}}, env={})
    assert trace_settings(config.telemetry, {}).endpoint == "https://collector.test/otlp/v1/traces"
    assert metric_settings(config.telemetry, {}).endpoint == "https://collector.test/otlp/v1/metrics"
