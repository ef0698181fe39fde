"""Telemetry: OpenTelemetry traces and metrics, the decision log, and the record stage."""

from gateway.telemetry.decision_log import DecisionLog, decision_record
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.observability import Observability, RequestTrace
from gateway.telemetry.stage import RecordStage, instrument
from gateway.telemetry.tracing import Telemetry

__all__ = ["DecisionLog", "Metrics", "Observability", "RecordStage", "RequestTrace", "Telemetry", "decision_record",
           "instrument"]
