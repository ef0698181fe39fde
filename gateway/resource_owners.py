"""Which upstream owns a resource URI a client of `/mcp` named without `customs://<upstream>/`.

Agents written against one server, and URIs taken from tool results (which are passed through as the
upstream wrote them), name resources by the upstream's own URI. Such a URI goes to the one upstream
whose `resources/list` pages list it, or whose `resources/templates/list` has a level-1 template it
expands from (or that template itself, for completions). No owner, several owners, or an upstream
that could not be asked all mean no owner: picking one of several would read another server's
resource, and an upstream that did not answer might hold the URI too.

What each upstream lists is remembered until it sends `notifications/resources/list_changed`, and
at most `LIST_TTL_S` (an HTTP upstream's notifications reach the gateway only while some session
holds a stream open to it). An upstream called with the same credential for everyone (mode none or
static) shows everyone the same list, so that one is shared; with per-principal credentials (minted,
token_exchange) each principal's list is its own, or a principal could learn from the answers
whether URIs appear in another's list.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.uri_templates import template_pattern

log = logging.getLogger("customs.resources")

# (upstream, method, params) -> result: a request on the calling principal's behalf (Router.fetch).
Fetch = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_PAGES: Final = 100
METHOD_NOT_FOUND: Final = -32601
LIST_TTL_S: Final = 60.0
MAX_PRINCIPALS: Final = 1024  # remembered lists per upstream with per-principal credentials, least recent dropped
SHARED_MODES: Final = frozenset({"none", "static"})  # credential modes that are the same for every principal
SHARED: Final = ""  # the key of an upstream's one list when it is shared


@dataclass(frozen=True)
class UpstreamResources:
    """The URIs and URI templates one upstream lists."""

    names: frozenset[str]  # resource URIs and URI templates as written
    patterns: tuple[re.Pattern[str], ...]  # the level-1 templates among them

    @classmethod
    def of(cls, uris: Iterable[str], templates: Iterable[str]) -> UpstreamResources:
        templates = list(templates)
        patterns = tuple(p for p in map(template_pattern, templates) if p is not None)
        return cls(frozenset([*uris, *templates]), patterns)

    def has(self, uri: str) -> bool:
        return uri in self.names or any(p.fullmatch(uri) for p in self.patterns)


@dataclass(frozen=True)
class Listed:
    """One list as fetched, and when (for the expiry)."""

    resources: UpstreamResources
    at: float


class ResourceOwners:
    """Per-upstream memory of listed resources: one list per upstream called with a credential that is
    the same for everyone, else one per principal."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig], *, ttl_s: float = LIST_TTL_S,
                 max_principals: int = MAX_PRINCIPALS, clock: Callable[[], float] = time.monotonic) -> None:
        self._shared = {name: config.credentials.mode in SHARED_MODES for name, config in upstreams.items()}
        self._known: dict[str, OrderedDict[str, Listed]] = {name: OrderedDict() for name in upstreams}
        # Bumped by each invalidation, so a list fetched across one is not remembered as current.
        self._generation = dict.fromkeys(upstreams, 0)
        self._ttl_s = ttl_s
        self._max_principals = max_principals
        self._clock = clock

    def invalidate(self, upstream: str) -> None:
        self._known[upstream].clear()
        self._generation[upstream] += 1

    async def owner(self, uri: str, fetch: Fetch, principal: str) -> str | None:
        """The single upstream holding `uri` for `principal` (its key), or None (none, several, or one that
        could not be asked). `fetch` asks on that principal's behalf."""
        answers = await asyncio.gather(*(self._has(upstream, uri, fetch, principal) for upstream in self._generation))
        if None in answers:
            return None
        owners = [upstream for upstream, has in zip(self._generation, answers, strict=True) if has]
        return owners[0] if len(owners) == 1 else None

    async def _has(self, upstream: str, uri: str, fetch: Fetch, principal: str) -> bool | None:
        key = SHARED if self._shared[upstream] else principal
        known = self._remembered(upstream, key)
        if known is None:
            generation = self._generation[upstream]
            try:
                known = UpstreamResources.of(await _all(fetch, upstream, "resources/list", "resources", "uri"),
                                             await _all(fetch, upstream, "resources/templates/list",
                                                        "resourceTemplates", "uriTemplate"))
            except (GatewayError, UpstreamErrorResponse) as exc:
                log.info("resources of %s unknown (%s): bare resource URIs have no owner", upstream, exc)
                return None
            if self._generation[upstream] == generation:
                self._remember(upstream, key, known)
        return known.has(uri)

    def _remembered(self, upstream: str, key: str) -> UpstreamResources | None:
        lists = self._known[upstream]
        listed = lists.get(key)
        if listed is None:
            return None
        if self._clock() - listed.at >= self._ttl_s:
            del lists[key]
            return None
        lists.move_to_end(key)
        return listed.resources

    def _remember(self, upstream: str, key: str, resources: UpstreamResources) -> None:
        lists = self._known[upstream]
        lists[key] = Listed(resources, self._clock())
        lists.move_to_end(key)
        while len(lists) > self._max_principals:
            lists.popitem(last=False)


async def _all(fetch: Fetch, upstream: str, method: str, key: str, field: str) -> list[str]:
    """Every page of one list's `field`s; none when the upstream does not offer the method."""
    found: list[str] = []
    cursor: Any = None
    for _ in range(MAX_PAGES):
        try:
            result = await fetch(upstream, method, {"cursor": cursor} if cursor else {})
        except UpstreamErrorResponse as exc:
            if cursor is None and exc.error.get("code") == METHOD_NOT_FOUND:
                return []
            raise
        items = result.get(key)
        if isinstance(items, list):
            found.extend(i[field] for i in items if isinstance(i, dict) and isinstance(i.get(field), str))
        cursor = result.get("nextCursor")
        if not cursor:
            return found
    raise GatewayError("upstream_error", f"{method} of {upstream} has more than {MAX_PAGES} pages")
