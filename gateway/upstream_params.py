"""What of an agent's request params goes upstream: the stateless envelope's keys and the gateway's task hint stay
at the edge; everything else is forwarded untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.jsonrpc import META_TASK_KEY

ENVELOPE_PREFIX = "io.modelcontextprotocol/"


def without_task(params: dict[str, Any]) -> dict[str, Any]:
    """A request of the router's own (lists, completion, ...) without the gateway's task hint, which the credential
    stage takes out of the pipeline's calls: the upstream never sees it."""
    meta = params.get("_meta")
    if isinstance(meta, dict) and META_TASK_KEY in meta:
        params["_meta"] = {k: v for k, v in meta.items() if k != META_TASK_KEY}
        if not params["_meta"]:
            del params["_meta"]
    return params


def upstream_params(params: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """Params as sent upstream: the stateless envelope keys stay at the edge (upstreams speak a
    handshake revision), everything else is forwarded untouched."""
    out = {**params, **changes}
    meta = out.get("_meta")
    if isinstance(meta, dict) and any(k.startswith(ENVELOPE_PREFIX) for k in meta):
        out["_meta"] = {k: v for k, v in meta.items() if not k.startswith(ENVELOPE_PREFIX)}
        if not out["_meta"]:
            del out["_meta"]
    return out
