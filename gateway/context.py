"""The facts of one call, handed from stage to stage (identity, tool, decision, approval, credential)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

Outcome = Literal["allow", "deny", "approval_required"]
# CallContext.extra key set when the tool, prompt or resource asked for does not exist: its own name (the
# upstream's, or as the client wrote it when no upstream has it). The record says so; the agent's answer does not.
NOT_FOUND_ITEM: Final = "not_found_item"


@dataclass(frozen=True)
class Actor:
    """One member of a delegation chain (RFC 8693 `act`), with the attributes known for it."""

    id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """The agent instance making the call, bound to its issuer, plus the actors it acts through.

    `chain` is ordered from the immediate actor (the agent that sent this request on the
    principal's behalf, the outermost `act`) to the innermost. `token` is the raw bearer token,
    kept only for token exchange; it never reaches logs, spans or upstreams.
    """

    id: str
    issuer: str
    subject: str
    attributes: dict[str, Any] = field(default_factory=dict)
    chain: tuple[Actor, ...] = ()
    token: str | None = field(default=None, repr=False, compare=False)
    expires_at: float | None = None
    anonymous: bool = False

    @cached_property  # (kept in the instance's __dict__: later reads are plain attribute reads)
    def key(self) -> str:
        """Stable identity used to bind sessions and approvals: issuer + subject."""
        return f"{self.issuer}|{self.subject}"

    @property
    def tenant(self) -> str | None:
        value = self.attributes.get("tenant")
        return value if isinstance(value, str) else None

    @property
    def chain_ids(self) -> list[str]:
        return [actor.id for actor in self.chain]


@dataclass(frozen=True)
class ToolInfo:
    """A tool (or prompt/resource) as the policy sees it: upstream, names and labels."""

    upstream: str
    name: str  # the upstream's own name
    read_only: bool = False
    destructive: bool = True  # MCP defaults: destructiveHint true, readOnlyHint false
    idempotent: bool = False
    open_world: bool = True
    sensitivity: str = "internal"
    leaves_org: bool = False
    definition: dict[str, Any] = field(default_factory=dict, compare=False)

    @cached_property  # read ~3 times a call, of a ToolInfo the catalog keeps: built once, then a plain attribute read
    def cedar_id(self) -> str:
        return f"{self.upstream}/{self.name}"


@dataclass(frozen=True)
class Decision:
    """The authorizer's answer. `policy_ids` are the `@id` annotations that determined it."""

    outcome: Outcome
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    eval_us: float = 0.0
    policy_version: str = ""
    shadow_outcome: Outcome | None = None


@dataclass
class ApprovalState:
    """What the approve stage learned: the approval item and its outcome."""

    id: str
    outcome: str  # approved | denied | expired | cancelled | abandoned | reused
    decided_by: tuple[str, ...] = ()
    comment: str | None = None
    waited_s: float = 0.0
    # (trace id, span id) in hex of the `customs.approval` span of the request that asked for the approval
    # (stored on the item), for a span link from a retry or an identical call that joined it.
    held_span: tuple[str, str] | None = None


# One encoder, built once: json.dumps with these options builds a new JSONEncoder on every call,
# which costs more than encoding a small argument object. Its output is the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def args_digest(args: Any) -> str:
    """sha256 of the canonical JSON of the arguments: what an approval binds to."""
    return "sha256:" + hashlib.sha256(canonical_json(args).encode()).hexdigest()


def _new_id() -> str:
    """A random 128-bit id; uuid4() costs several times more and the UUID form adds nothing here."""
    return os.urandom(16).hex()


@dataclass
class CallContext:
    """Everything known about one MCP request as it moves through the pipeline.

    Built by the dispatcher; each stage reads what earlier stages set and adds its own part.
    """

    method: str
    request_id: Any
    params: dict[str, Any]
    principal: Principal
    upstream: str | None = None
    tool: ToolInfo | None = None
    session_id: str | None = None
    task_id: str | None = None
    protocol_version: str | None = None
    progress_token: Any = None
    action: str = "call_tool"
    decision: Decision | None = None
    approval: ApprovalState | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)
    upstream_meta: dict[str, Any] = field(default_factory=dict)
    credential_mode: str = "none"
    credential_audience: str | None = None
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    decision_id: str = field(default_factory=_new_id)
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    trace_id: str | None = None
    notify: Any = None  # async callable(dict) that sends a message on this request's response stream
    cancelled: Any = None  # asyncio.Event set when the client withdraws this request
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def args(self) -> dict[str, Any]:
        value = self.params.get("arguments")
        return value if isinstance(value, dict) else {}

    @property
    def digest(self) -> str:
        cached = self.extra.get("args_digest")
        if cached is None:
            cached = self.extra["args_digest"] = args_digest(self.args)
        return str(cached)
