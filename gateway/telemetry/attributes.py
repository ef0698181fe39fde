"""Span and metric attributes of a call: the MCP semantic conventions plus the gateway's `customs.*` facts.

Only identifiers, labels and digests go here. Tokens never do; argument values only when
`traces.capture_args` is on (then as `gen_ai.tool.call.arguments`, canonical JSON, after the
secret redactor: spans leave the gateway, so a key or token in an argument must not ride along).

What a call decided is known only when it ends; the event loop then puts a tuple of those facts on the span
(`call_facts`, `decision_facts`) under the key `FACTS`, and `expand` builds the attributes where spans are
exported (the exporter child, or the console exporter's `readable`). Hashing the arguments for
`customs.args_digest` was the largest part of a traced call's attribute work. Attributes many spans share (one
principal's, one kind of request's) go as one shared dict under `SHARED` or `WHO`, also merged by `expand`:
spans are marshalled to the exporter, and a shared dict is written once per batch, not pair by pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from gateway.context import NOT_FOUND_ITEM, ApprovalState, CallContext, Decision, Principal, args_digest, canonical_json

if TYPE_CHECKING:  # the exporter child imports this module: not the config models
    from gateway.config.model import UpstreamConfig

Attrs = dict[str, Any]
Redact = Callable[[Any], Any]
# Keys of deferred attributes start with NUL, as no attribute name the gateway sets does, so they never clash.
FACTS: Final = "\0customs.facts"  # a tuple (builder name, *facts): `expand` builds the attributes
SHARED: Final = "\0customs.shared"  # a dict many spans share (read-only): `expand` merges it
WHO: Final = "\0customs.who"  # the same, for the principal's attributes (`principal_attributes`)
PEER: Final = "\0customs.peer"  # the same, for a connection's client.address/port (`connection_attributes`)
DEFERRED: Final = frozenset({FACTS, SHARED, WHO, PEER})

# Which request parameter names the span's target, per method (low cardinality only: no resource URIs).
TARGET_PARAM = {"tools/call": "name", "prompts/get": "name"}
# The methods MCP defines (the conventions' `mcp.method.name` values, the revisions since, the gateway's own
# notification). Any other method an agent sends is `_OTHER` in metrics and span names, as the HTTP conventions
# do for methods they do not know: a caller must not pick the values of a metric attribute.
MCP_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list",
    "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "logging/setLevel", "sampling/createMessage", "elicitation/create", "roots/list",
    "server/discover", "tasks/get", "tasks/result", "tasks/list", "tasks/cancel",
    "notifications/initialized", "notifications/cancelled", "notifications/progress", "notifications/message",
    "notifications/roots/list_changed", "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/resources/list_changed", "notifications/resources/updated", "notifications/elicitation/complete",
    "notifications/tasks/status", "notifications/customs/task_end",
})
OTHER_METHOD = "_OTHER"


def target_of(method: str, params: Mapping[str, Any] | None) -> str | None:
    key = TARGET_PARAM.get(method)
    value = params.get(key) if key and params else None
    return value if isinstance(value, str) and value else None


def shared_request_attributes(method: str, params: Mapping[str, Any], protocol_version: str | None) -> Attrs:
    """The part of `request_attributes` every request of one method, target and protocol version shares: with
    `request_id` and `session_id` set apart, they make the same attributes."""
    attrs: Attrs = {"network.transport": "tcp", "network.protocol.name": "http"}
    if protocol_version:
        attrs["mcp.protocol.version"] = protocol_version
    attrs.update(_target_attributes(method, params, False))
    return attrs


def request_attributes(method: str, params: Mapping[str, Any] | None, request_id: Any, *,
                       session_id: str | None = None, protocol_version: str | None = None,
                       capture_args: bool = False, redact: Redact | None = None) -> Attrs:
    """Attributes of the inbound (SERVER) span, known as soon as the JSON-RPC message is parsed."""
    attrs: Attrs = {"mcp.method.name": method, "network.transport": "tcp", "network.protocol.name": "http"}
    if request_id is not None:
        attrs["jsonrpc.request.id"] = str(request_id)
    if session_id:
        attrs["mcp.session.id"] = session_id
    if protocol_version:
        attrs["mcp.protocol.version"] = protocol_version
    attrs.update(_target_attributes(method, params or {}, capture_args, redact))
    return attrs


def connection_attributes(peer: Any, http_version: Any) -> Attrs:
    """`client.*` and `network.protocol.version` of the inbound HTTP connection (the SERVER span).

    `peer` is the socket's peername (host, port[, …]); `http_version` aiohttp's HttpVersion (major, minor).
    """
    attrs: Attrs = {}
    if http_version is not None:
        attrs["network.protocol.version"] = "2" if http_version[0] == 2 else f"{http_version[0]}.{http_version[1]}"
    if isinstance(peer, tuple) and len(peer) >= 2:
        attrs["client.address"] = str(peer[0])
        attrs["client.port"] = int(peer[1])
    return attrs


def _target_attributes(method: str, params: Mapping[str, Any], capture_args: bool,
                       redact: Redact | None = None) -> Attrs:
    attrs: Attrs = {}
    name = params.get("name")
    if method == "tools/call" and isinstance(name, str):
        attrs["gen_ai.tool.name"] = name
        attrs["gen_ai.operation.name"] = "execute_tool"
        if capture_args and isinstance(params.get("arguments"), dict):
            args = params["arguments"]
            attrs["gen_ai.tool.call.arguments"] = canonical_json(redact(args) if redact else args)
    elif method == "prompts/get" and isinstance(name, str):
        # No prompt list is kept: the name is the agent's until the upstream answers, and may be a pasted token.
        attrs["gen_ai.prompt.name"] = redact(name) if redact else name
    elif method.startswith("resources/") and isinstance(params.get("uri"), str):
        attrs["mcp.resource.uri"] = redact(params["uri"]) if redact else params["uri"]  # may carry a token
    return attrs


def principal_attributes(principal: Principal) -> Attrs:
    """Who is calling: the principal and its delegation chain (never the token)."""
    attrs: Attrs = {"customs.principal": principal.id, "customs.issuer": principal.issuer,
                    "customs.chain": tuple(principal.chain_ids), "customs.chain_depth": len(principal.chain)}
    if principal.chain:
        attrs["customs.actor"] = principal.chain[0].id  # the immediate actor: one string, searchable by tag
    if principal.tenant:
        attrs["customs.tenant"] = principal.tenant
    return attrs


def decision_attributes(decision: Decision | None) -> Attrs:
    if decision is None:
        return {}
    return _decision(decision.outcome, decision.policy_ids, decision.eval_us, decision.policy_version,
                     decision.shadow_outcome)


# The decision facts of a call for a tool, prompt or resource that does not exist: no policy decided it (no
# evaluation time, no policy version), but the agent heard a denial, which the decision log and `customs.calls`
# record as `deny`; the span says the same, so Jaeger's customs.decision=deny finds probing for names too.
NOT_FOUND_DECISION: Final = ("deny", (), None, "", None)


def _decision(outcome: str, policy_ids: tuple[str, ...], eval_us: float | None, version: str,
              shadow: str | None) -> Attrs:
    attrs: Attrs = {"customs.decision": outcome, "customs.policy_ids": tuple(policy_ids)}
    if eval_us is None:
        attrs["customs.not_found"] = True  # NOT_FOUND_DECISION: as the decision log's `not_found`
    else:
        attrs["customs.authz.eval_us"] = float(eval_us)
    if version:
        attrs["customs.policy_version"] = version
    if shadow is not None:
        attrs["customs.shadow_decision"] = shadow
    return attrs


def decision_facts(decision: Decision | None) -> Attrs:
    """The authorize span's attributes, deferred: `{FACTS: facts}` (see `expand`)."""
    if decision is None:
        return {}
    return {FACTS: ("decision", decision.outcome, decision.policy_ids, decision.eval_us, decision.policy_version,
                    decision.shadow_outcome)}


def approval_attributes(approval: ApprovalState | None) -> Attrs:
    if approval is None:
        return {}
    return _approval(approval.id, approval.outcome, approval.waited_s, approval.decided_by)


def _approval(approval_id: str, outcome: str, waited_s: float, decided_by: tuple[str, ...]) -> Attrs:
    attrs: Attrs = {"customs.approval.id": approval_id, "customs.approval.outcome": outcome,
                    "customs.approval.wait_s": float(waited_s)}
    if decided_by:
        # One string (a quorum's subjects joined by ", ", as the approvals API shows decided_by): Jaeger makes
        # an array attribute the JSON text '["alice"]', which the tag search approver=alice never matches.
        attrs["customs.approval.approver"] = ", ".join(decided_by)
    return attrs


def credential_attributes(ctx: CallContext) -> Attrs:
    return _credential(ctx.credential_mode, ctx.credential_audience)


def _credential(mode: str, audience: str | None) -> Attrs:
    attrs: Attrs = {"customs.credential.mode": mode}
    if audience:
        attrs["customs.credential.audience"] = audience
    return attrs


def call_attributes(ctx: CallContext) -> Attrs:
    """Everything the gateway decided about a call: set on the SERVER span when the call finishes,
    so one search by tag (e.g. customs.decision=deny) finds the request. (Who called is set when
    the span starts: `principal_attributes`.)"""
    return expand({FACTS: call_facts(ctx)})


def call_facts(ctx: CallContext) -> tuple[Any, ...]:
    """`call_attributes`, deferred (see `expand`): values the call holds. The arguments go instead of their digest
    when none was made yet (an approval makes one): the exporter hashes them, off the event loop."""
    digest = ctx.extra.get("args_digest")
    decision = ctx.decision
    approval = ctx.approval
    return ("call", digest, ctx.args if digest is None else None, ctx.decision_id, ctx.upstream, ctx.task_id,
            (decision.outcome, decision.policy_ids, decision.eval_us, decision.policy_version,
             decision.shadow_outcome) if decision is not None else
            NOT_FOUND_DECISION if NOT_FOUND_ITEM in ctx.extra else None,
            (approval.id, approval.outcome, approval.waited_s, approval.decided_by) if approval is not None else None,
            ctx.credential_mode, ctx.credential_audience)


def _call(digest: str | None, args: Any, decision_id: str, upstream: str | None, task_id: str | None,
          decision: tuple[Any, ...] | None, approval: tuple[Any, ...] | None, mode: str, audience: str | None) -> Attrs:
    attrs: Attrs = {"customs.args_digest": digest if digest is not None else args_digest(args),
                    "customs.decision_id": decision_id}
    if upstream:
        attrs["customs.upstream"] = upstream
    if task_id:
        attrs["customs.task_id"] = task_id
    if decision is not None:
        attrs.update(_decision(*decision))
    if approval is not None:
        attrs.update(_approval(*approval))
    attrs.update(_credential(mode, audience))
    return attrs


_BUILDERS: dict[str, Callable[..., Attrs]] = {"call": _call, "decision": _decision, "credential": _credential}


def built(facts: tuple[Any, ...]) -> Attrs:
    """The attributes a FACTS value stands for, without unset (None) values: its part of `expand`."""
    kind, *values = facts
    return {k: v for k, v in _BUILDERS[kind](*values).items() if v is not None}


def expand(attributes: dict[str, Any]) -> dict[str, Any]:
    """`attributes` with their deferred parts (keys in DEFERRED) in their place: facts built, shared dicts merged;
    unset (None) values left out as a span's `set_attributes` leaves them out. The same dict when there are none."""
    if FACTS not in attributes and SHARED not in attributes and WHO not in attributes and PEER not in attributes:
        return attributes
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key in DEFERRED:
            if type(value) is dict:
                items = value.items()
            else:
                kind, *facts = value
                items = _BUILDERS[kind](*facts).items()
            out.update((k, v) for k, v in items if v is not None)
        else:
            out[key] = value
    return out


def upstream_attributes(ctx: CallContext, transport: Attrs | None, capture_args: bool = False,
                        redact: Redact | None = None) -> Attrs:
    """The CLIENT span to the upstream: its own tool name, transport and address."""
    return client_attributes(ctx.upstream, ctx.method, ctx.params, transport, capture_args, redact)


def client_attributes(upstream: str | None, method: str, params: Mapping[str, Any], transport: Attrs | None,
                      capture_args: bool = False, redact: Redact | None = None) -> Attrs:
    """A CLIENT span's attributes from the request as sent upstream (forwarded calls and the router's own requests).

    Not `jsonrpc.request.id`: the transport gives the request an id of its own (the upstream connection may be
    shared) and tells the span (`sent_id`), so the span carries the id the upstream saw."""
    attrs: Attrs = {"customs.upstream": upstream}
    attrs.update(_target_attributes(method, params, capture_args, redact))
    if transport:
        attrs.update(transport)
    return attrs


def transport_attributes(upstream: UpstreamConfig) -> Attrs:
    """`network.*` / `server.*` of an upstream (the instrumented forward computes these once)."""
    if upstream.kind == "stdio":
        return {"network.transport": "pipe"}
    parts = urlsplit(upstream.url or "")
    # The upstream HTTP client speaks HTTP/1.1 (no HTTP/2 is negotiated).
    attrs: Attrs = {"network.transport": "tcp", "network.protocol.name": "http", "network.protocol.version": "1.1"}
    if parts.hostname:
        attrs["server.address"] = parts.hostname
        attrs["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return attrs
