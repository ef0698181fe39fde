"""The pending-call record (`Approval`): its fields, states, wire JSON and the key that binds it to one call."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal

State = Literal["pending", "approved", "denied", "expired", "cancelled", "abandoned"]
STATES: Final[tuple[str, ...]] = ("pending", "approved", "denied", "expired", "cancelled", "abandoned")
TERMINAL: Final[frozenset[str]] = frozenset(STATES) - {"pending"}
Outcome = Literal["approved", "denied"]


class ApprovalNotFound(Exception):
    """No approval with this id (or it aged out of history)."""


class AlreadyDecided(Exception):
    """The item left `pending` before this decision; `approval` is its current state."""

    def __init__(self, approval: Approval, reason: str = "already_decided") -> None:
        self.approval = approval
        self.reason = reason
        super().__init__(f"{reason}: approval {approval.id} is {approval.state}")


def binding_key(principal_key: str, upstream: str, tool: str, args_digest: str, chain: tuple[str, ...] = (),
                method: str = "tools/call", tenant: str | None = None) -> str:
    """One call's identity for approval purposes: same principal in the same tenant, delegation chain, method, tool
    and exact arguments.

    The chain is part of the call: approvers decide (and the self-approval rule applies) on the chain they
    were shown, so the same agent calling through other actors, or directly, needs its own approval. So is the
    method: a prompt (`prompts/get`) and a tool of one name on one upstream are different calls, and approving
    the one must not release the other. And the tenant: one agent (issuer and subject) may act for several
    tenants, one per token, and approvers decided in the one they were shown. A tool call without a chain or a
    tenant keeps the key it always had (replicas of older versions still join it). The chain is one part, as JSON:
    its actors written out one by one could pose as the markers after them (actors "tenant", "acme").
    """
    parts = (principal_key, upstream, tool, args_digest, *(("chain", json.dumps(chain)) if chain else ()),
             *(("method", method) if method != "tools/call" else ()), *(("tenant", tenant) if tenant else ()))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def new_id() -> str:
    return "apr_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Vote:
    """One approver's decision (quorum > 1 collects several)."""

    by: str
    outcome: str
    comment: str | None
    at: float


@dataclass(frozen=True)
class Approval:
    """A call held for human approval, as stored and as shown to approvers.

    `args` are already redacted; `args_digest` binds the approval to the exact (unredacted)
    arguments. `executed` turns true exactly once, when the approved call is claimed for forwarding; if the call
    then never reached the upstream (re-check denied, no credential, ...) `not_executed` says why, and the item
    reads as not executed while staying used (claimed: one approval, at most one execution). The one exception is a
    call refused because the agent's token expired while it was held: its claim is handed back (`executed` false
    again, store.hand_back), since it never reached the upstream, and the retry with a refreshed token claims it.
    """

    id: str
    state: str
    upstream: str
    tool: str
    principal: str  # the requesting agent's id (spiffe id or sub)
    principal_key: str  # issuer|subject: what the approval is bound to
    chain: tuple[str, ...]
    tenant: str | None
    args: Any
    args_digest: str
    policies: tuple[str, ...]
    created_at: float
    expires_at: float
    key: str = ""
    subject: str = ""  # the requester's `sub`, for the self-approval check
    owners: tuple[str, ...] = ()  # the people the requester (and its chain's actors) act for: no self-approval
    policy_version: str = ""
    quorum: int = 1
    decided_by: tuple[str, ...] = ()
    comment: str | None = None
    decided_at: float | None = None
    executed: bool = False  # claimed for forwarding (the claim flag: reset only by a hand-back, before any forward)
    not_executed: str | None = None  # claimed, but the call never reached the upstream: why
    votes: tuple[Vote, ...] = ()
    method: str = "tools/call"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    # The held call's trace and span (hex), for the decision log's approval records. Kept in `extra`, a field
    # every version stores and reads, so items stay readable by replicas of any version (docs/approvals.md).
    @property
    def trace_id(self) -> str | None:
        value = self.extra.get("trace_id")
        return value if isinstance(value, str) else None

    @property
    def span_id(self) -> str | None:
        value = self.extra.get("span_id")
        return value if isinstance(value, str) else None

    @property
    def what(self) -> str:
        """What the approver is asked to allow, after the tool's name: nothing for a tool call, else the request
        (` (prompts/get)`, ` (resources/read)`): a prompt and a tool of one name are different calls."""
        return "" if self.method == "tools/call" else f" ({self.method})"

    @property
    def claimable(self) -> bool:
        return self.state == "approved" and not self.executed

    @property
    def ran(self) -> bool:
        """The approved call was forwarded (it may have executed upstream)."""
        return self.executed and self.not_executed is None

    def with_state(self, state: str, **changes: Any) -> Approval:
        return replace(self, state=state, **changes)

    def requester_ids(self) -> set[str]:
        """Everyone on whose behalf the call was made: they may not approve it. That includes the owners
        (the `owner` attribute of the requester and of the chain's actors): a person who owns the agent
        would otherwise approve their own agent's call."""
        return {x for x in (self.principal, self.subject, *self.chain, *self.owners) if x}

    def to_json(self) -> dict[str, Any]:
        """The documented wire shape (plus `quorum`, `votes`, `decided_at`, `executed`, `policy_version`)."""
        return {
            "id": self.id, "state": self.state, "upstream": self.upstream, "tool": self.tool,
            "principal": self.principal, "chain": list(self.chain), "tenant": self.tenant,
            "args": self.args, "args_digest": self.args_digest, "policies": list(self.policies),
            "created_at": self.created_at, "expires_at": self.expires_at,
            "decided_by": ", ".join(self.decided_by) if self.decided_by else None,
            "comment": self.comment,
            "quorum": self.quorum, "votes": [asdict(v) for v in self.votes],
            "decided_at": self.decided_at, "executed": self.ran, "not_executed": self.not_executed,
            "method": self.method,
            "policy_version": self.policy_version or None,  # the set that held the call (it may reload since)
        }

    def cedar_attrs(self) -> dict[str, Any]:
        """Attributes of the Cedar resource `Approval::"<id>"` for action `approve`."""
        return {"id": self.id, "upstream": self.upstream, "tool": self.tool, "args": self.args,
                "requester": self.principal, "chain": list(self.chain)}

    def to_record(self) -> dict[str, Any]:
        """Everything, for storage (round-trips through `from_record`)."""
        record = asdict(self)
        record["votes"] = [asdict(v) for v in self.votes]
        if not self.owners:
            # Replicas from before `owners` existed build the item with `cls(**record)` and would fail on it;
            # left out when empty, an item of an agent without an owner stays readable during a rolling deploy.
            del record["owners"]
        if self.not_executed is None:  # likewise: stored only for a claimed call that never ran
            del record["not_executed"]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Approval:
        # Fields this version does not know are dropped: replicas of different versions share one store.
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in record.items() if k in known}
        data["chain"] = tuple(data.get("chain") or ())
        data["owners"] = tuple(data.get("owners") or ())
        data["policies"] = tuple(data.get("policies") or ())
        data["decided_by"] = tuple(data.get("decided_by") or ())
        data["votes"] = tuple(Vote(**v) for v in data.get("votes") or ())
        return cls(**data)


def event(approval: Approval, transition: str, *, actor: str | None = None, comment: str | None = None,
          at: float | None = None, detail: str | None = None) -> dict[str, Any]:
    """A decision-log record for one state change (the telemetry decision log writes it).

    It carries the held call's `trace_id`/`span_id` when the item has them, wherever the change happens (the
    approvers' API, the expiry sweep, another replica): an auditor joins who decided to the call's trace."""
    record: dict[str, Any] = {
        "kind": "approval", "transition": transition, "approval_id": approval.id, "state": approval.state,
        "actor": actor, "comment": comment, "method": approval.method, "upstream": approval.upstream,
        "tool": approval.tool,
        "principal": approval.principal, "chain": list(approval.chain), "tenant": approval.tenant,
        "args_digest": approval.args_digest, "policies": list(approval.policies),
        "decided_by": list(approval.decided_by), "at": at,
        "created_at": approval.created_at,  # when the call was held: `at` minus it is how long it waited
        "expires_at": approval.expires_at,  # (an expiry is found by a sweep, up to seconds after this)
    }
    if approval.trace_id is not None:
        record.update(trace_id=approval.trace_id, span_id=approval.span_id)
    if detail is not None:  # `not_executed`: why the claimed call never ran
        record["detail"] = detail
    return record
