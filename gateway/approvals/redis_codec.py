"""Approval items as the Redis store keeps them: hash fields (bytes or text) back into an `Approval`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from gateway.approvals.model import Approval, Vote


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_hash(flat: Sequence[Any]) -> dict[str, str]:
    items = [text(v) for v in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def approval_from_hash(fields: dict[str, str]) -> Approval:
    """Rebuild an Approval from its Redis hash: immutable `rec` JSON plus the mutable fields."""
    record = json.loads(fields["rec"])
    votes = tuple(Vote(**v) for v in json.loads(fields.get("votes") or "[]"))
    state = fields["state"]
    record.update(state=state, votes=[asdict(v) for v in votes], executed=fields.get("executed") == "1",
                  not_executed=fields.get("not_executed") or None,
                  decided_at=float(fields["decided_at"]) if fields.get("decided_at") else None)
    if state == "denied" and votes:
        record.update(decided_by=[votes[-1].by], comment=votes[-1].comment)
    elif state == "approved" and votes:
        record.update(decided_by=[v.by for v in votes if v.outcome == "approved"], comment=votes[-1].comment)
    return Approval.from_record(record)
