"""Which upstream owns a resource URI a client of `/mcp` named without `<upstream>+`.

Agents written against one server, and URIs taken from tool results (which are passed through as the
upstream wrote them), name resources by the upstream's own URI. Such a URI goes to the one upstream
whose `resources/list` pages list it, or whose `resources/templates/list` has a level-1 template it
expands from (or that template itself, for completions). No owner, several owners, or an upstream
that could not be asked all mean no owner: picking one of several would read another server's
resource, and an upstream that did not answer might hold the URI too.

What each upstream lists is remembered until it sends `notifications/resources/list_changed`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.uri_templates import template_pattern

log = logging.getLogger("customs.resources")

# (upstream, method, params) -> result: a request on the calling principal's behalf (Router.fetch).
Fetch = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_PAGES: Final = 100
METHOD_NOT_FOUND: Final = -32601


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


class ResourceOwners:
    """Per-upstream memory of listed resources, shared by every session (like tool definitions)."""

    def __init__(self, upstreams: Iterable[str]) -> None:
        self._known: dict[str, UpstreamResources] = {}
        # Bumped by each invalidation, so a list fetched across one is not remembered as current.
        self._generation = dict.fromkeys(upstreams, 0)

    def invalidate(self, upstream: str) -> None:
        self._known.pop(upstream, None)
        self._generation[upstream] += 1

    async def owner(self, uri: str, fetch: Fetch) -> str | None:
        """The single upstream holding `uri`, or None (none, several, or one that could not be asked)."""
        answers = await asyncio.gather(*(self._has(upstream, uri, fetch) for upstream in self._generation))
        if None in answers:
            return None
        owners = [upstream for upstream, has in zip(self._generation, answers, strict=True) if has]
        return owners[0] if len(owners) == 1 else None

    async def _has(self, upstream: str, uri: str, fetch: Fetch) -> bool | None:
        known = self._known.get(upstream)
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
                self._known[upstream] = known
        return known.has(uri)


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
