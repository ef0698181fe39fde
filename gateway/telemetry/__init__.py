"""Telemetry: OpenTelemetry traces and metrics, the decision log, and the record stage.

The names below are imported on first use: the decision-log writer process imports
`gateway.telemetry.decision_writer` alone, and must not pay for OpenTelemetry and aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.telemetry.decision_log import DecisionLog, decision_record
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.observability import Observability
    from gateway.telemetry.request_block import RequestTrace
    from gateway.telemetry.stage import RecordStage, instrument
    from gateway.telemetry.tracing import Telemetry

_WHERE = {"DecisionLog": "decision_log", "decision_record": "decision_log", "Metrics": "metrics",
          "Observability": "observability", "RequestTrace": "request_block", "RecordStage": "stage",
          "instrument": "stage", "Telemetry": "tracing"}

__all__ = ["DecisionLog", "Metrics", "Observability", "RecordStage", "RequestTrace", "Telemetry", "decision_record",
           "instrument"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
