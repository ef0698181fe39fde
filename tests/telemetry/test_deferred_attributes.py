"""Attributes built where spans are exported (`attributes.expand`): the same as built on the loop, in their place."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import HttpVersion

from gateway.config import parse_config
from gateway.context import ApprovalState, CallContext, Decision, Principal, ToolInfo, args_digest
from gateway.telemetry.attributes import (
    FACTS,
    SHARED,
    approval_attributes,
    call_attributes,
    call_facts,
    connection_attributes,
    credential_attributes,
    decision_attributes,
    decision_facts,
    expand,
    request_attributes,
)
from gateway.telemetry.observability import SHARED_LIMIT, Observability
from gateway.telemetry.otlp_encode import OtlpEncoder
from tests.telemetry.test_otlp_encode import RESOURCE, SERVER, assert_same, span


def call(**changes: Any) -> CallContext:
    ctx = CallContext(method="tools/call", request_id=3,
                      principal=Principal(id="agent-b", issuer="https://idp", subject="agent-b"),
                      params={"name": "get_stock", "arguments": {"sku": "A-1", "n": [1, 2.5, None]}},
                      upstream="inventory", tool=ToolInfo("inventory", "get_stock"), task_id="task-9",
                      decision=Decision("allow", ("reads-allowed", "tenant-scope"), eval_us=71, policy_version="v7",
                                        shadow_outcome="deny"),
                      credential_mode="minted", credential_audience="http://inv/mcp")
    for key, value in changes.items():
        setattr(ctx, key, value)
    return ctx


def on_the_loop(ctx: CallContext) -> dict[str, Any]:
    """What `call_attributes` made before it was deferred, written out."""
    attrs: dict[str, Any] = {"customs.args_digest": args_digest(ctx.args), "customs.decision_id": ctx.decision_id}
    if ctx.upstream:
        attrs["customs.upstream"] = ctx.upstream
    if ctx.task_id:
        attrs["customs.task_id"] = ctx.task_id
    attrs.update(decision_attributes(ctx.decision))
    attrs.update(approval_attributes(ctx.approval))
    attrs.update(credential_attributes(ctx))
    return attrs


def test_call_facts_expand_to_the_call_attributes() -> None:
    ctx = call()
    assert call_attributes(ctx) == on_the_loop(ctx)
    assert list(call_attributes(ctx)) == list(on_the_loop(ctx))  # the same order too
    assert call_attributes(ctx)["customs.args_digest"] == args_digest({"n": [1, 2.5, None], "sku": "A-1"})


def test_a_digest_made_already_is_used_and_the_arguments_not_shipped() -> None:
    ctx = call()
    ctx.extra["args_digest"] = "sha256:made-by-the-approval"
    facts = call_facts(ctx)
    assert ctx.args not in facts  # only what the exporter needs leaves the loop
    assert expand({FACTS: facts})["customs.args_digest"] == "sha256:made-by-the-approval"


def test_approval_no_decision_and_unset_values() -> None:
    ctx = call(decision=None, upstream=None, task_id=None, credential_audience=None,
               approval=ApprovalState("ap-1", "approved", ("alice", "bob"), waited_s=3))
    ctx.params = {"name": "x"}  # no arguments: the digest of {}
    attrs = call_attributes(ctx)
    assert attrs == on_the_loop(ctx)
    assert attrs["customs.approval.approver"] == "alice, bob" and attrs["customs.approval.wait_s"] == 3.0
    assert "customs.decision" not in attrs and "customs.upstream" not in attrs
    assert attrs["customs.args_digest"] == args_digest({})


def test_decision_facts_expand_to_the_decision_attributes() -> None:
    decision = Decision("deny", ("forbid-writes",), eval_us=12.5)
    assert expand(decision_facts(decision)) == decision_attributes(decision)
    assert decision_facts(None) == {} and expand({}) == {}


def test_expanded_in_place_and_later_values_win() -> None:
    ctx = call()
    attrs = {"mcp.method.name": "tools/call", FACTS: call_facts(ctx), "error.type": "tool_error"}
    out = expand(attrs)
    keys = list(out)
    assert keys[0] == "mcp.method.name" and keys[-1] == "error.type" and FACTS not in out
    assert {k: v for k, v in out.items() if k not in ("mcp.method.name", "error.type")} == on_the_loop(ctx)
    plain = {"a": 1}
    assert expand(plain) is plain  # nothing deferred: no copy


def test_exported_spans_carry_the_built_attributes() -> None:
    """The OTLP encoder (exporter child) and the SDK path (console exporter) both expand, and give the same span as
    one whose attributes were built on the loop."""
    ctx = call()
    deferred = [span(kind=SERVER, attributes={"mcp.method.name": "tools/call", FACTS: call_facts(ctx)}),
                span(attributes=decision_facts(ctx.decision))]
    built = [span(kind=SERVER, attributes={"mcp.method.name": "tools/call", **on_the_loop(ctx)}),
             span(attributes=decision_attributes(ctx.decision))]
    assert_same(deferred)
    assert OtlpEncoder(RESOURCE).encode(deferred) == OtlpEncoder(RESOURCE).encode(built)


def test_credential_facts_expand_to_the_credential_attributes() -> None:
    for ctx in (call(), call(credential_mode="none", credential_audience=None)):
        facts = {FACTS: ("credential", ctx.credential_mode, ctx.credential_audience)}  # what StageRecorder ships
        assert expand(facts) == credential_attributes(ctx)


REQUESTS = [
    ("tools/call", {"name": "inventory__get_stock", "arguments": {"sku": "A-1"}}, 7, "sess-1", "2025-11-25"),
    ("tools/call", {"name": "", "arguments": {}}, "c-1", None, None),
    ("tools/call", {"name": 5}, None, "sess-2", "2025-06-18"),
    ("prompts/get", {"name": "greet"}, 1, "sess-1", "2025-11-25"),
    ("initialize", {"protocolVersion": "2025-11-25"}, 0, None, None),
    ("tools/list", {}, 2, "sess-1", "2025-11-25"),
    ("resources/read", {"uri": "file:///a/b.txt"}, 3, "sess-1", "2025-11-25"),
    ("made/up", {"name": "x"}, 4, None, "2025-11-25"),
]


@pytest.mark.parametrize("method,params,request_id,session_id,version", REQUESTS)
def test_shared_request_attributes_expand_to_the_request_attributes(method: str, params: dict[str, Any],
                                                                   request_id: Any, session_id: str | None,
                                                                   version: str | None) -> None:
    obs = Observability(parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}],
                                      "telemetry": {"traces": {"endpoint": "http://127.0.0.1:9/v1/traces"}}},
                                     env={}), env={})
    for http_version in (None, HttpVersion(1, 1), HttpVersion(2, 0)):
        expected = request_attributes(method, params, request_id, session_id=session_id, protocol_version=version,
                                      redact=obs.telemetry.redact)
        expected.update(connection_attributes(None, http_version))
        for _ in range(2):  # built, then shared
            got = obs._request_attributes(method, params, request_id, session_id, version, http_version)
            assert expand(got) == expected
    if not method.startswith("resources/"):
        assert SHARED in got  # the part shared by such requests


def test_the_shared_parts_are_bounded() -> None:
    obs = Observability(parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}],
                                      "telemetry": {"traces": {"endpoint": "http://127.0.0.1:9/v1/traces"}}},
                                     env={}), env={})
    for n in range(SHARED_LIMIT + 10):  # tool names are the agent's to choose
        obs._request_attributes("tools/call", {"name": f"t{n}"}, n, None, None)
    assert len(obs._shared) <= SHARED_LIMIT
