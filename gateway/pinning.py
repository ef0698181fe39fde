"""Tool integrity: pin each upstream tool's definition and quarantine tools that change.

A pin is the sha256 of a tool's name, description, input schema and annotations
(`catalog.definition_hash`). Pins come from config (`upstreams[].tools.<name>.pin`) or are taken
on first sight (mode `tofu`); in mode `strict` a tool without a pin stays hidden until an
administrator approves it. A pinned tool whose definition changes (a rug pull, a flipped
`destructiveHint`) is quarantined — hidden and uncallable — until an administrator re-approves
the new definition. A renamed tool is simply a new tool. Descriptions that mention other
servers' tools are flagged (tool poisoning).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.catalog import definition_hash
from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError

log = logging.getLogger("customs.pinning")

Event = Callable[..., None]


class PinStore(Protocol):
    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]: ...

    async def put(self, upstream: str, tool: str, record: dict[str, Any]) -> None: ...


@dataclass
class MemoryPins:
    pins: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]:
        return dict(self.pins.get(upstream, {}))

    async def put(self, upstream: str, tool: str, record: dict[str, Any]) -> None:
        self.pins.setdefault(upstream, {})[tool] = record


class RedisPins:
    """Pins in a Redis hash per upstream, so every replica quarantines the same tools."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "pins:"

    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]:
        try:
            raw = await self._redis.hgetall(self._prefix + upstream)
        except Exception as exc:  # tools that cannot be checked are not served (fail closed)
            raise GatewayError("policy_unavailable", "Tool pin store unavailable") from exc
        return {_s(k): json.loads(v) for k, v in raw.items()}

    async def put(self, upstream: str, tool: str, record: dict[str, Any]) -> None:
        try:
            await self._redis.hset(self._prefix + upstream, tool, json.dumps(record))
        except Exception as exc:
            raise GatewayError("policy_unavailable", "Tool pin store unavailable") from exc


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Verdict:
    usable: list[dict[str, Any]]
    quarantined: list[str]
    flagged: list[str]


class ToolGuard:
    """Checks listed tools against their pins; decides which may be shown and called."""

    def __init__(self, upstreams: Iterable[UpstreamConfig], store: PinStore,
                 mode: Literal["tofu", "strict", "off"] = "tofu", on_event: Event | None = None) -> None:
        self._configs = {u.name: u for u in upstreams}
        self._store = store
        self._mode = mode
        self._on_event = on_event or (lambda **_: None)
        names = set(self._configs) | {u.tool_prefix.rstrip("_") for u in self._configs.values()}
        self._mentions = {u: re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names - {u}) if n) + r")\w*",
                                        re.IGNORECASE) for u in self._configs} if len(names) > 1 else {}

    async def check(self, upstream: str, tools: list[dict[str, Any]]) -> Verdict:
        if self._mode == "off":
            return Verdict(tools, [], [])
        pins = await self._store.get_all(upstream)
        config = self._configs[upstream]
        usable: list[dict[str, Any]] = []
        quarantined: list[str] = []
        flagged: list[str] = []
        for tool in tools:
            name = str(tool.get("name"))
            digest = definition_hash(tool)
            override = config.tools.get(name)
            pinned = override.pin if override and override.pin else (pins.get(name) or {}).get("hash")
            if pinned is None:
                if self._mode == "strict":
                    quarantined.append(name)
                    await self._quarantine(upstream, name, digest, "new tool awaiting approval", pins)
                    continue
                await self._store.put(upstream, name, {"hash": digest, "state": "pinned", "by": "first-use"})
                self._on_event(type="tool_pinned", upstream=upstream, tool=name, hash=digest, by="first-use")
            elif pinned != digest:
                quarantined.append(name)
                await self._quarantine(upstream, name, digest, "definition changed since it was pinned", pins)
                continue
            if self._mentions_other_servers(upstream, tool):
                flagged.append(name)
            usable.append(tool)
        return Verdict(usable, quarantined, flagged)

    async def _quarantine(self, upstream: str, name: str, digest: str, why: str,
                          pins: Mapping[str, dict[str, Any]]) -> None:
        current = pins.get(name) or {}
        if current.get("state") == "quarantined" and current.get("seen") == digest:
            return  # already reported
        record = {**current, "state": "quarantined", "seen": digest, "reason": why}
        await self._store.put(upstream, name, record)
        log.warning("tool %s/%s quarantined: %s", upstream, name, why)
        self._on_event(type="tool_quarantined", upstream=upstream, tool=name, hash=digest, reason=why)

    def _mentions_other_servers(self, upstream: str, tool: Mapping[str, Any]) -> bool:
        pattern = self._mentions.get(upstream)
        description = str(tool.get("description") or "")
        if pattern is None or not pattern.search(description):
            return False
        log.warning("tool %s/%s description mentions another server's tools", upstream, tool.get("name"))
        self._on_event(type="tool_flagged", upstream=upstream, tool=str(tool.get("name")),
                       reason="description mentions another server")
        return True

    async def approve(self, upstream: str, name: str, digest: str, by: str) -> dict[str, Any]:
        """An administrator accepts the definition `digest` (as shown by `list`) for a tool."""
        record = {"hash": digest, "state": "pinned", "by": by}
        await self._store.put(upstream, name, record)
        self._on_event(type="tool_approved", upstream=upstream, tool=name, hash=digest, by=by)
        return record

    async def list(self, upstream: str) -> dict[str, dict[str, Any]]:
        return await self._store.get_all(upstream)
