"""The instrumented pipeline: span tree, attributes, propagation into the upstream request, log and metrics."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.config.model import UpstreamConfig
from gateway.context import Actor, ApprovalState, CallContext, Decision, Principal, ToolInfo, args_digest
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.telemetry import Observability
from gateway.telemetry.attributes import transport_attributes
from gateway.telemetry.tracing import NO_SPAN
from tests.support.otlp import OtlpReceiver, ReceivedSpan

PRINCIPAL = Principal(id="agent-b", issuer="https://idp.example", subject="agent-b", attributes={"tenant": "acme"},
                      chain=(Actor("agent-a"),), token="NEVER-IN-SPANS")


@dataclass
class Upstream:
    """Stands in for ForwardStage's upstream: records what would be sent, exactly as ForwardStage builds it."""

    inject: Callable[[dict[str, str], dict[str, Any]], None]
    result: dict[str, Any] = field(default_factory=lambda: {"content": [{"type": "text", "text": "7"}]})
    sent: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, ctx: CallContext) -> dict[str, Any]:
        headers, meta = dict(ctx.upstream_headers), dict(ctx.params.get("_meta") or {})
        self.inject(headers, meta)
        self.sent.append((headers, meta))
        return self.result


@dataclass
class Harness:
    obs: Observability
    otlp: OtlpReceiver
    log_path: Path
    upstream: Upstream | None = None

    def pipeline(self, decision: Decision, *, approval: ApprovalState | None = None,
                 deny_reason: str | None = None, result: dict[str, Any] | None = None) -> Pipeline:
        async def authorize(ctx: CallContext) -> None:
            ctx.decision = decision
            if deny_reason:
                raise GatewayError(deny_reason)

        async def approve(ctx: CallContext) -> None:
            ctx.approval = approval

        async def credential(ctx: CallContext) -> None:
            ctx.credential_mode, ctx.credential_audience = "minted", "http://127.0.0.1:9001/mcp"
            ctx.upstream_headers["Authorization"] = "Bearer minted-secret"

        self.upstream = Upstream(self.obs.inject)
        if result is not None:
            self.upstream.result = result
        return self.obs.instrument(Pipeline(authorize=authorize, approve=approve, credential=credential,
                                            forward=self.upstream, record=self.obs.record))

    async def run(self, pipeline: Pipeline, *, args: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None) -> ReceivedSpan:
        params = {"name": "inventory__get_stock", "arguments": args or {"sku": "A-1"}, "_meta": meta or {}}
        ctx = CallContext(method="tools/call", request_id=3, principal=PRINCIPAL, upstream="inventory",
                          tool=ToolInfo("inventory", "get_stock"), session_id="sess-1", protocol_version="2025-11-25",
                          params={**params, "name": "get_stock"})
        t0 = time.time_ns()
        with self.obs.request({}, "tools/call", params, 3, principal=PRINCIPAL, session_id="sess-1",
                              protocol_version="2025-11-25", start_ns=t0, identify_ns=(t0, t0 + 1000)) as req:
            try:
                await pipeline.run(ctx)
            except GatewayError as exc:
                req.fail(exc)
        await self.obs.telemetry.flush()
        return await self.otlp.wait_for_span(
            lambda s: s.kind == "SERVER" and s.attributes.get("customs.decision_id") == ctx.decision_id)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


def make(otlp: OtlpReceiver, tmp_path: Path, **traces: Any) -> Observability:
    config = parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}],
                           "decision_log": {"path": str(tmp_path / "d.jsonl")},
                           "telemetry": {"traces": {"endpoint": otlp.url, **traces}}}, env={})
    return Observability(config, env={})


def make_untraced(tmp_path: Path) -> Observability:
    config = parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}],
                           "decision_log": {"path": str(tmp_path / "d.jsonl")}}, env={})
    return Observability(config, env={})


@pytest.fixture
async def harness(otlp: OtlpReceiver, tmp_path: Path) -> AsyncIterator[Harness]:
    obs = make(otlp, tmp_path)
    await obs.start()
    yield Harness(obs, otlp, tmp_path / "d.jsonl")
    await obs.close()


async def test_allowed_call_span_tree_and_propagation(harness: Harness) -> None:
    server = await harness.run(harness.pipeline(Decision("allow", ("permit-read",), eval_us=80.0)),
                               meta={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"})
    otlp = harness.otlp
    assert server.name == "tools/call inventory__get_stock"
    assert server.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and server.parent_span_id == "00f067aa0ba902b7"
    attrs = server.attributes
    assert attrs["mcp.method.name"] == "tools/call" and attrs["jsonrpc.request.id"] == "3"
    assert attrs["mcp.session.id"] == "sess-1" and attrs["mcp.protocol.version"] == "2025-11-25"
    assert attrs["gen_ai.tool.name"] == "inventory__get_stock" and attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["customs.principal"] == "agent-b" and attrs["customs.chain"] == ("agent-a",)
    assert attrs["customs.chain_depth"] == 1 and attrs["customs.decision"] == "allow"
    assert attrs["customs.policy_ids"] == ("permit-read",) and attrs["customs.upstream"] == "inventory"
    # Hashed where the span is exported (no approval made a digest on the loop): the same digest the record has.
    assert attrs["customs.credential.mode"] == "minted" and attrs["customs.args_digest"] == args_digest({"sku": "A-1"})
    await harness.obs.log.flush()
    assert [r["args_digest"] for r in harness.records() if r.get("decision_id") == attrs["customs.decision_id"]] \
        == [attrs["customs.args_digest"]]
    assert "gen_ai.tool.call.arguments" not in attrs and "error.type" not in attrs
    children = {s.name: s for s in otlp.children(server)}
    assert set(children) == {"customs.identify", "customs.authorize", "customs.credential", "tools/call get_stock"}
    assert children["customs.authorize"].attributes["customs.authz.eval_us"] == 80.0
    assert children["customs.credential"].attributes["customs.credential.audience"] == "http://127.0.0.1:9001/mcp"
    client = children["tools/call get_stock"]
    assert client.kind == "CLIENT" and client.attributes["gen_ai.tool.name"] == "get_stock"
    assert client.attributes["server.address"] == "127.0.0.1" and client.attributes["server.port"] == 9001
    assert client.attributes["network.transport"] == "tcp"
    headers, meta = harness.upstream.sent[0]  # type: ignore[union-attr]
    assert meta["traceparent"].split("-")[2] == client.span_id == headers["traceparent"].split("-")[2]
    assert "NEVER-IN-SPANS" not in repr(otlp.spans) and "minted-secret" not in repr(otlp.spans)
    await harness.obs.log.close()
    (record,) = harness.records()
    assert (record["trace_id"], record["span_id"]) == (server.trace_id, server.span_id)
    assert record["decision"] == "allow" and record["outcome"] == "ok" and record["credential_mode"] == "minted"
    text = harness.obs.metrics.prometheus_text().decode()
    for stage in ("authorize", "credential", "forward"):
        assert f'stage="{stage}"' in text
    assert 'stage="approve"' not in text
    assert "mcp_client_operation_duration_seconds_count" in text
    assert "mcp_server_operation_duration_seconds_count" in text


async def test_denied_call_marks_the_server_span(harness: Harness) -> None:
    server = await harness.run(harness.pipeline(Decision("deny", ("forbid-payments",)), deny_reason="unknown_tool"))
    assert server.attributes["customs.decision"] == "deny"
    assert server.attributes["customs.policy_ids"] == ("forbid-payments",)
    assert server.attributes["error.type"] == "unknown_tool" and server.status == "ERROR"
    children = {s.name: s for s in harness.otlp.children(server)}
    assert set(children) == {"customs.identify", "customs.authorize"}
    assert children["customs.authorize"].status == "ERROR"  # the stage that raised, reported by the pipeline
    await harness.obs.log.close()
    (record,) = harness.records()
    assert (record["decision"], record["outcome"], record["reason"]) == ("deny", "error", "unknown_tool")
    text = harness.obs.metrics.prometheus_text().decode()
    assert 'customs_calls_total{customs_decision="deny",customs_outcome="unknown_tool"' in text
    assert 'error_type="unknown_tool"' in text  # on mcp.server.operation.duration


async def test_held_call_gets_an_approval_span(harness: Harness) -> None:
    approval = ApprovalState("ap-9", "approved", ("alice",), "fine", waited_s=2.5)
    server = await harness.run(harness.pipeline(Decision("approval_required", ("hold-pay",)), approval=approval))
    children = {s.name: s for s in harness.otlp.children(server)}
    attrs = children["customs.approval"].attributes
    assert attrs == {"customs.approval.id": "ap-9", "customs.approval.outcome": "approved",
                     "customs.approval.approver": "alice", "customs.approval.wait_s": 2.5}
    assert server.attributes["customs.approval.id"] == "ap-9"
    assert server.attributes["customs.decision"] == "approval_required"
    # The wait is timed when the approval ends, from the store's record (test_approval_wait_metric.py), not here.
    assert "customs_approval_wait_duration_seconds_count{" not in harness.obs.metrics.prometheus_text().decode()


async def test_a_quorums_approvers_are_one_string_as_the_approvals_api_shows_them(harness: Harness) -> None:
    # One string, not an array: Jaeger turns an array attribute into the JSON text '["alice"]', which a tag
    # search customs.approval.approver=alice (docs/tracing.md) never matches.
    approval = ApprovalState("ap-10", "approved", ("alice", "bob"), None, waited_s=1.0)
    server = await harness.run(harness.pipeline(Decision("approval_required", ("hold-pay",)), approval=approval))
    (span,) = [s for s in harness.otlp.children(server) if s.name == "customs.approval"]
    assert span.attributes["customs.approval.approver"] == "alice, bob"
    assert server.attributes["customs.approval.approver"] == "alice, bob"


async def test_tool_error_result_sets_error_type(harness: Harness) -> None:
    server = await harness.run(harness.pipeline(Decision("allow"), result={"isError": True, "content": []}))
    client = next(s for s in harness.otlp.children(server) if s.kind == "CLIENT")
    assert server.attributes["error.type"] == client.attributes["error.type"] == "tool_error"


async def test_capture_args_opt_in(otlp: OtlpReceiver, tmp_path: Path) -> None:
    obs = make(otlp, tmp_path, capture_args=True)
    await obs.start()
    try:
        harness = Harness(obs, otlp, tmp_path / "d.jsonl")
        server = await harness.run(harness.pipeline(Decision("allow")), args={"sku": "Z-9"})
    finally:
        await obs.close()
    assert json.loads(server.attributes["gen_ai.tool.call.arguments"]) == {"sku": "Z-9"}


async def test_tracing_off_still_records_log_and_metrics(tmp_path: Path) -> None:
    obs = make_untraced(tmp_path)
    await obs.start()
    try:
        assert not obs.telemetry.enabled
        pipeline = Harness(obs, OtlpReceiver(), tmp_path / "d.jsonl").pipeline(Decision("allow"))
        ctx = CallContext(method="tools/call", request_id=1, params={"name": "get_stock"}, principal=PRINCIPAL,
                          upstream="inventory", tool=ToolInfo("inventory", "get_stock"))
        with obs.request({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "tools/call",
                         {"name": "inventory__get_stock"}, 1) as req:
            await pipeline.run(ctx)
        assert req.trace_id is None
        text = obs.metrics.prometheus_text().decode()
        assert "customs_calls_total{" in text
        for stage in ("authorize", "credential", "forward"):  # timed by the pipeline and the forward wrapper
            assert re.search(rf'customs_stage_duration_seconds_count{{[^}}]*stage="{stage}"}} 1\.0', text), stage
    finally:
        await obs.close()
    (record,) = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert record["trace_id"] is None and record["decision"] == "allow"


class _Gone(Exception):
    """Stands for what may leave a request block: a cancellation, a failure the edge does not answer."""


async def test_an_exception_leaving_the_request_block_marks_span_and_metric(harness: Harness) -> None:
    with pytest.raises(_Gone), harness.obs.request(
            {}, "tools/call", {"name": "inventory__get_stock"}, "left-1", principal=PRINCIPAL, session_id="s",
            start_ns=time.time_ns(), identify_ns=(time.time_ns(), time.time_ns() + 10)) as req:
        assert harness.obs.telemetry.current_span() is req.span  # current inside the block
        raise _Gone("client went away")
    assert isinstance(req.error, _Gone)
    assert harness.obs.telemetry.current_span() is NO_SPAN  # and no longer after it
    await harness.obs.telemetry.flush()
    server = await harness.otlp.wait_for_span(
        lambda s: s.kind == "SERVER" and s.attributes.get("jsonrpc.request.id") == "left-1")
    assert server.status == "ERROR" and server.attributes["error.type"] == "_Gone"
    assert {s.name for s in harness.otlp.children(server)} == {"customs.identify"}
    text = harness.obs.metrics.prometheus_text().decode()
    assert re.search(r'mcp_server_operation_duration_seconds_count{[^}]*error_type="_Gone"[^}]*} 1\.0', text)


async def test_an_exception_leaving_the_request_block_with_tracing_off(tmp_path: Path) -> None:
    obs = make_untraced(tmp_path)
    await obs.start()
    try:
        with pytest.raises(_Gone), obs.request({}, "tools/call", {"name": "inventory__get_stock"}, 2) as req:
            raise _Gone
        assert isinstance(req.error, _Gone) and req.span is NO_SPAN
        text = obs.metrics.prometheus_text().decode()
        assert re.search(r'mcp_server_operation_duration_seconds_count{[^}]*error_type="_Gone"[^}]*} 1\.0', text)
    finally:
        await obs.close()


def test_stdio_upstreams_use_the_pipe_transport() -> None:
    stdio = UpstreamConfig(name="files", command=("python", "-m", "server"))
    assert transport_attributes(stdio) == {"network.transport": "pipe"}


async def test_event_records_and_pending_gauge(harness: Harness) -> None:
    harness.obs.approval_changed("ap-1", "pending", upstream="payments", tool="pay")
    harness.obs.approval_changed("ap-1", "approved", decided_by=["alice"])
    harness.obs.policy_reloaded(False, error="syntax error at line 3")
    harness.obs.tool_quarantined("inventory", "get_stock", "definition changed", "sha256:1")
    harness.obs.event("revocation", jti="jti-1", reason="approval revoked")  # as the credential store records it
    harness.obs.event("custom", x=1)
    await harness.obs.log.close()
    records = harness.records()
    assert [r["type"] for r in records] == ["approval", "approval", "policy_reload", "quarantine", "revocation",
                                            "custom"]
    assert records[1]["state"] == "approved" and records[2]["outcome"] == "error"
    text = harness.obs.metrics.prometheus_text().decode()
    assert "customs_tool_quarantines_total{" in text and 'customs_outcome="error"' in text
    # Approval events go to the log only: the pending gauge is the store's count (PendingGauge), unknown here.
    assert "customs_approvals_pending" not in text


async def test_client_span_attributes_are_each_calls_own(harness: Harness) -> None:
    """The CLIENT span's attributes are built once per upstream/method/tool/URI: URIs must not leak, and the
    agent's request id is not the CLIENT span's (that is the id the transport sends upstream, which it sets)."""
    pipeline = harness.pipeline(Decision("allow", ("permit-read",)))
    seen = []
    for request_id, uri in ((10, "file:///a"), (11, "file:///b"), (12, "file:///a")):
        ctx = CallContext(method="resources/read", request_id=request_id, principal=PRINCIPAL, upstream="inventory",
                          session_id="sess-1", params={"uri": uri})
        with harness.obs.request({}, "resources/read", {"uri": uri}, request_id, principal=PRINCIPAL,
                                 session_id="sess-1"):
            await pipeline.run(ctx)
        await harness.obs.telemetry.flush()
        server = await harness.otlp.wait_for_span(
            lambda s, rid=request_id: s.kind == "SERVER" and s.attributes.get("jsonrpc.request.id") == str(rid))
        [client] = await harness.otlp.wait_for(
            lambda r, parent=server: [s for s in r.children(parent) if s.kind == "CLIENT"])
        seen.append((client.attributes.get("jsonrpc.request.id"), client.attributes["mcp.resource.uri"],
                     client.attributes["customs.upstream"]))
    assert seen == [(None, "file:///a", "inventory"), (None, "file:///b", "inventory"),
                    (None, "file:///a", "inventory")]


def test_attribute_memo_shares_per_object_and_keeps_nothing_alive() -> None:
    import gc
    import weakref

    from gateway.memo import Memo
    from gateway.telemetry.attributes import principal_attributes

    built: list[str] = []

    def build(principal: Principal) -> dict[str, Any]:
        built.append(principal.id)
        return principal_attributes(principal)

    memo = Memo(build, limit=2)
    first = Principal(id="a", issuer="i", subject="a", token="SECRET-A")
    assert memo(first) is memo(first) and built == ["a"]  # built once, then shared
    twin = Principal(id="a", issuer="i", subject="a", token="SECRET-A")
    assert memo(twin) == memo(first) and built == ["a", "a"]  # an equal but different object is its own entry
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # the memo does not keep a principal (and its token) alive
    for n in range(5):  # bounded: past the limit it starts over
        memo(Principal(id=f"p{n}", issuer="i", subject=f"p{n}"))
    assert len(memo._items) <= 2


async def test_the_pipeline_times_each_stage_and_reports_the_one_that_raised() -> None:
    """authorize and credential are timed by Pipeline.run itself; a re-check after approval is timed too,
    and a stage that raises is reported once, with its error, before the error reaches the caller."""
    reports: list[tuple[str, str | None]] = []

    def timed(stage: str, ctx: CallContext, started_ns: int, error: BaseException | None) -> None:
        assert time.perf_counter_ns() >= started_ns
        reports.append((stage, type(error).__name__ if error else None))

    async def authorize(ctx: CallContext) -> None:
        ctx.decision = Decision("approval_required", ("hold",))

    async def approve(ctx: CallContext) -> None:
        ctx.approval = ApprovalState("ap-1", "approved", ("alice",))

    async def credential(ctx: CallContext) -> None:
        raise GatewayError("credential_unavailable")

    async def forward(ctx: CallContext) -> dict[str, Any]:
        raise AssertionError("never forwarded")

    async def record(ctx: CallContext) -> None:
        reports.append(("record", type(ctx.error).__name__ if ctx.error else None))

    pipeline = Pipeline(authorize=authorize, approve=approve, credential=credential, forward=forward,
                        record=record, timed=timed)
    ctx = CallContext(method="tools/call", request_id=1, params={"name": "get_stock"}, principal=PRINCIPAL,
                      upstream="inventory", tool=ToolInfo("inventory", "get_stock"))
    with pytest.raises(GatewayError):
        await pipeline.run(ctx)
    assert reports == [("authorize", None), ("authorize", None), ("credential", "GatewayError"),
                       ("record", "GatewayError")]
