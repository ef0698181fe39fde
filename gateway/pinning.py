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

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from redis.exceptions import RedisError

from gateway.catalog import definition_hash, usable_name
from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError

log = logging.getLogger("customs.pinning")

Event = Callable[..., None]


class PinStore(Protocol):
    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]: ...

    async def put(self, upstream: str, tool: str, record: dict[str, Any], *, announce: bool = False) -> None:
        """Store `record`; `announce`: the other replicas must drop their list of `upstream` now."""

    async def put_first(self, upstream: str, tool: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Store `record` only if the tool has no record yet (first use); else return the one found."""


@dataclass
class MemoryPins:
    pins: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]:
        return dict(self.pins.get(upstream, {}))

    async def put(self, upstream: str, tool: str, record: dict[str, Any], *, announce: bool = False) -> None:
        self.pins.setdefault(upstream, {})[tool] = record

    async def put_first(self, upstream: str, tool: str, record: dict[str, Any]) -> dict[str, Any] | None:
        found = self.pins.setdefault(upstream, {}).setdefault(tool, record)
        return None if found is record else found


class RedisPins:
    """Pins in a Redis hash per upstream, so every replica quarantines the same tools.

    A quarantine or re-approval is announced on `<prefix>pins:events`; every other replica drops its cached
    list of that upstream (`on_changed`), so its next call re-lists and meets the pin check at once instead
    of calling a quarantined tool until its own background pass. After a lost subscription (Redis down)
    `on_changed(None)` drops every list: announcements may have been missed meanwhile.
    """

    def __init__(self, redis: Any, prefix: str, on_changed: Callable[[str | None], None] | None = None) -> None:
        self._redis = redis
        self._prefix = prefix + "pins:"
        self._channel = prefix + "pins:events"
        self._replica = uuid.uuid4().hex  # its own announcements need no action
        self._on_changed = on_changed
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._on_changed is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(self._on_changed), name="customs-pin-events")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen(self, on_changed: Callable[[str | None], None]) -> None:
        backoff, subscribed_before = 0.05, False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message.get("type") == "subscribe":
                        backoff = 0.05
                        if subscribed_before:
                            on_changed(None)
                        subscribed_before = True
                    elif message.get("type") == "message":
                        replica, _, upstream = _s(message["data"]).partition(" ")
                        if replica != self._replica:
                            on_changed(upstream)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("pin announcements lost: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)  # reconnect backoff
            backoff = min(backoff * 2, 2.0)

    async def get_all(self, upstream: str) -> dict[str, dict[str, Any]]:
        try:
            raw = await self._redis.hgetall(self._prefix + upstream)
        except Exception as exc:  # tools that cannot be checked are not served (fail closed)
            raise GatewayError("policy_unavailable", "Tool pin store unavailable") from exc
        return {_s(k): json.loads(v) for k, v in raw.items()}

    async def put(self, upstream: str, tool: str, record: dict[str, Any], *, announce: bool = False) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._prefix + upstream, tool, json.dumps(record))
            if announce:
                pipe.publish(self._channel, f"{self._replica} {upstream}")
            await pipe.execute()
        except Exception as exc:
            raise GatewayError("policy_unavailable", "Tool pin store unavailable") from exc


    async def put_first(self, upstream: str, tool: str, record: dict[str, Any]) -> dict[str, Any] | None:
        # HSETNX: two replicas first seeing a tool at once (its definition may differ between their lists)
        # do not overwrite each other; the later one is held to the pin already there.
        try:
            if await self._redis.hsetnx(self._prefix + upstream, tool, json.dumps(record)):
                return None
            raw = await self._redis.hget(self._prefix + upstream, tool)
        except Exception as exc:
            raise GatewayError("policy_unavailable", "Tool pin store unavailable") from exc
        return dict(json.loads(raw)) if raw is not None else None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Verdict:
    usable: list[dict[str, Any]]
    quarantined: list[str]
    flagged: list[str]


# A bare tool name counts as a mention only when it looks like an identifier, not a word of prose.
DISTINCTIVE = re.compile(r"[_\-.0-9]|[a-z][A-Z]")
DISTINCTIVE_LENGTH = 10


def distinctive(name: str) -> bool:
    """Whether another server's bare tool name in a description is a reference rather than an ordinary word:
    it has a `_`, `-`, `.`, a digit or a camelCase hump (`set_stock`, `s3put`, `getStock`), or is at least
    DISTINCTIVE_LENGTH characters long."""
    return bool(DISTINCTIVE.search(name)) or len(name) >= DISTINCTIVE_LENGTH


def _effective_pin(config_pin: str | None, record: Mapping[str, Any], digest: str) -> str | None:
    """The hash a tool's definition `digest` must match: the stored pin, or the config's pin if it has
    one, unless an administrator approved exactly `digest` since. Without that exception a
    re-approval of a config-pinned tool would be recorded and reported, yet never lift its quarantine."""
    stored = record.get("hash")
    if not config_pin:
        return stored if isinstance(stored, str) else None
    if stored == digest and record.get("by") != "first-use":
        return digest
    return config_pin


def _one_per_name(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The first definition listed under each name, and the names listed more than once with different
    definitions (each with its distinct hashes, in list order). Such a list once had the pinned copy of a
    name served and callable beside a changed copy that quarantined the name: an upstream can say both."""
    first: dict[str, dict[str, Any]] = {}
    digests: dict[str, list[str]] = {}
    for tool in tools:
        name = str(tool.get("name"))
        if name not in first:
            first[name] = tool
            continue
        seen = digests.setdefault(name, [definition_hash(first[name])])
        digest = definition_hash(tool)
        if digest not in seen:
            seen.append(digest)
    return list(first.values()), {name: d for name, d in digests.items() if len(d) > 1}


class ToolGuard:
    """Checks listed tools against their pins; decides which may be shown and called."""

    def __init__(self, upstreams: Iterable[UpstreamConfig], store: PinStore,
                 mode: Literal["tofu", "strict", "off"] = "tofu", on_event: Event | None = None,
                 on_changed: Callable[[str], None] | None = None) -> None:
        self._configs = {u.name: u for u in upstreams}
        self._store = store
        self._mode = mode
        self._on_event = on_event or (lambda **_: None)
        self._on_changed = on_changed or (lambda _: None)  # an upstream's usable tools changed: drop its list
        # Per upstream, the descriptions of the tools it listed last: other servers' descriptions are
        # matched against its names, again whenever its names change (lists arrive in any order).
        self._listed: dict[str, dict[str, str]] = {u: {} for u in self._configs}
        self._flagged: dict[str, set[tuple[str, str]]] = {u: set() for u in self._configs}  # (tool, description)
        # Per upstream, the pin records this replica last read or wrote: what to put back when the store
        # lost them (Redis restarted without persistence), instead of trusting the current definitions.
        self._known: dict[str, dict[str, dict[str, Any]]] = {u: {} for u in self._configs}

    async def check(self, upstream: str, tools: list[dict[str, Any]]) -> Verdict:
        # A tool no agent can name is never usable, and its name would fail the pin store for every tool.
        tools = [tool for tool in tools if usable_name(tool.get("name"))]
        if self._mode == "off":
            return Verdict(tools, [], [])
        pins = await self._restore_lost(upstream, await self._store.get_all(upstream), tools)
        config = self._configs[upstream]
        usable: list[dict[str, Any]] = []
        quarantined: list[str] = []
        tools, twice = _one_per_name(tools)
        flagged = self._learn(upstream, tools)
        for tool in tools:
            name = str(tool.get("name"))
            digest = definition_hash(tool)
            override = config.tools.get(name)
            if name in twice:  # which copy would an agent be shown, which one would run? Neither is trusted.
                quarantined.append(name)
                pin = (pins.get(name) or {}).get("hash") or (override.pin if override else None)
                seen = next((d for d in twice[name] if d != pin), digest)
                await self._quarantine(upstream, name, seen, "listed more than once with different definitions",
                                       pins)
                continue
            pinned = _effective_pin(override.pin if override else None, pins.get(name) or {}, digest)
            if pinned is None:
                if self._mode == "strict":
                    quarantined.append(name)
                    await self._quarantine(upstream, name, digest, "new tool awaiting approval", pins)
                    continue
                record = {"hash": digest, "state": "pinned", "by": "first-use"}
                first = await self._store.put_first(upstream, name, record)
                if first is not None and not isinstance(first.get("hash"), str):  # a record with no pin yet
                    await self._store.put(upstream, name, record)
                    first = None
                self._known[upstream][name] = first or record
                if first is None:
                    self._on_event(type="tool_pinned", upstream=upstream, tool=name, hash=digest, by="first-use")
                else:  # another replica pinned it since this list was read: held to that pin
                    pins = {**pins, name: first}
                    pinned = _effective_pin(override.pin if override else None, first, digest)
            if pinned is not None and pinned != digest:
                quarantined.append(name)
                await self._quarantine(upstream, name, digest, "definition changed since it was pinned", pins)
                continue
            if (pins.get(name) or {}).get("state") == "quarantined":
                # Only an administrator lifts a quarantine: a list showing the pinned definition again (the
                # upstream reverted, or the list was fetched before the change and checked after) must not.
                quarantined.append(name)
                await self._quarantine(upstream, name, digest, "quarantined until an administrator re-approves it",
                                       pins)
                continue
            usable.append(tool)
        return Verdict(usable, quarantined, flagged)

    async def _restore_lost(self, upstream: str, pins: dict[str, dict[str, Any]],
                            tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Put back the pins of listed tools that this replica knew and the store no longer has (Redis
        restarted without persistence, a failover that lost writes). Without this the next list pinned
        whatever the upstream serves now on first use: a quarantined, changed tool was served again."""
        known = self._known[upstream]
        for name in {str(tool.get("name")) for tool in tools} - set(pins):
            if name in known:
                first = await self._store.put_first(upstream, name, known[name])
                pins = {**pins, name: first or known[name]}
                log.warning("tool %s/%s: its pin was missing from the store (Redis lost data?); restored",
                            upstream, name)
        known.update(pins)
        return pins

    async def _quarantine(self, upstream: str, name: str, digest: str, why: str,
                          pins: Mapping[str, dict[str, Any]]) -> None:
        current = pins.get(name) or {}
        if current.get("state") == "quarantined" and current.get("seen") == digest:
            return  # already reported
        record = {**current, "state": "quarantined", "seen": digest, "reason": why}
        await self._store.put(upstream, name, record, announce=True)
        self._known[upstream][name] = record
        # The caller may not install its verdict (a newer list was installed while it listed): the catalog
        # must not go on serving the tool from that list, so it re-lists before the next use.
        self._on_changed(upstream)
        log.warning("tool %s/%s quarantined: %s", upstream, name, why)
        self._on_event(type="tool_quarantined", upstream=upstream, tool=name, hash=digest, reason=why)

    def _learn(self, upstream: str, tools: list[dict[str, Any]]) -> list[str]:
        """Remember this list; flag its tools (and, if its names changed, other servers' tools) that
        mention another server's tools. Returns this upstream's flagged tool names."""
        listed = {str(t.get("name")): str(t.get("description") or "") for t in tools}
        renamed = set(listed) != set(self._listed[upstream])
        self._listed[upstream] = listed
        if renamed:  # tools that another server listed before this one may name this one's tools
            for other in self._configs:
                if other != upstream:
                    self._flag(other)
        return self._flag(upstream)

    def _flag(self, upstream: str) -> list[str]:
        pattern = self._mentions(upstream)
        found = {(name, description) for name, description in self._listed[upstream].items()
                 if pattern is not None and pattern.search(description)}
        for name, _ in sorted(found - self._flagged[upstream]):  # lists are checked again and again: report once
            log.warning("tool %s/%s description mentions another server's tools", upstream, name)
            self._on_event(type="tool_flagged", upstream=upstream, tool=name,
                           reason="description mentions another server")
        self._flagged[upstream] = found
        return sorted(name for name, _ in found)

    def _mentions(self, upstream: str) -> re.Pattern[str] | None:
        """Other servers' names and prefixes (as word starts), and their tools: prefixed names, and bare
        names that are distinctive and not also one of this server's own tools."""
        own = set(self._listed[upstream])
        starts: set[str] = set()
        names: set[str] = set()
        for other, config in self._configs.items():
            if other == upstream:
                continue
            starts.update(n for n in (other, config.tool_prefix.rstrip("_")) if n)
            for tool in self._listed[other]:
                if config.tool_prefix:
                    names.add(config.tool_prefix + tool)
                if distinctive(tool) and tool not in own:
                    names.add(tool)
        alternatives = [re.escape(n) + r"\w*" for n in sorted(starts)]
        alternatives += [re.escape(n) + r"(?![\w-])" for n in sorted(names, key=len, reverse=True)]
        if not alternatives:
            return None
        return re.compile(r"(?<![\w-])(?:" + "|".join(alternatives) + ")", re.IGNORECASE)

    async def approve(self, upstream: str, name: str, digest: str, by: str) -> dict[str, Any]:
        """An administrator accepts the definition `digest` (as shown by `list`) for a tool."""
        record = {"hash": digest, "state": "pinned", "by": by}
        await self._store.put(upstream, name, record, announce=True)
        self._known[upstream][name] = record
        self._on_event(type="tool_approved", upstream=upstream, tool=name, hash=digest, by=by)
        self._on_changed(upstream)  # takes effect for calls now, not at the next tools/list
        return record

    async def list(self, upstream: str) -> dict[str, dict[str, Any]]:
        return await self._store.get_all(upstream)
