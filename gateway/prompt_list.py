"""The prompts each upstream lists, so that a prompt name its upstream does not list answers exactly as a
denied one (`unknown_prompt`) rather than with the upstream's own error (docs/errors.md).

A list is learnt from any complete `prompts/list` an agent asks for, and read again (on the caller's behalf,
after its decision, as a tool list is) when a `prompts/get` names a prompt the last known list does not have:
prompts an upstream added since are found then, so no `notifications/prompts/list_changed` needs to reach the
gateway. A `prompts/get` the upstream answers with an error drops the list (a prompt removed since is read
again with the next call). One list per upstream, whatever its credential mode, as for tools. An upstream whose
list cannot be read answers for its prompts itself (as before) until a list is learnt or a prompts/get fails there:
reading it again at every call would be a list request per call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from gateway.context import ToolInfo
from gateway.errors import GatewayError, UpstreamErrorResponse

log = logging.getLogger("customs.prompts")

# (upstream, method, params) -> result: a request on the calling principal's behalf (Router.fetch).
Fetch = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_PAGES: Final = 100


class PromptLists:
    """Per upstream: its listed prompts as policy sees them (`info(upstream, name)`), or nothing known."""

    def __init__(self, upstreams: Iterable[str], info: Callable[[str, str], ToolInfo]) -> None:
        self._info = info
        self._known: dict[str, dict[str, ToolInfo]] = {}
        self._unreadable: set[str] = set()  # upstreams whose list could not be read: every name passes
        self._loading: dict[str, asyncio.Future[dict[str, ToolInfo] | None]] = {}
        # Bumped by each list learnt or dropped, so a list fetched across one is not installed over it.
        self._generation = dict.fromkeys(upstreams, 0)

    def get(self, upstream: str, name: str) -> ToolInfo | None:
        """The prompt in the upstream's last known list (any, when that list cannot be read); None when it is not
        there or no list is known yet."""
        known = self._known.get(upstream)
        if known is None:
            return self._info(upstream, name) if upstream in self._unreadable else None
        return known.get(name)

    def learn(self, upstream: str, names: Iterable[Any]) -> dict[str, ToolInfo]:
        """A complete list of the upstream's prompts (the items' names, as an agent's prompts/list got them)."""
        known = {name: self._info(upstream, name) for name in names if isinstance(name, str)}
        self._known[upstream] = known
        self._unreadable.discard(upstream)
        self._generation[upstream] += 1
        return known

    def forget(self, upstream: str) -> None:
        self._unreadable.discard(upstream)
        if self._known.pop(upstream, None) is not None:
            self._generation[upstream] += 1

    async def find(self, upstream: str, name: str, fetch: Fetch) -> ToolInfo | None:
        """The prompt after a miss, by the upstream's list read again (one read shared by callers that miss
        meanwhile). None when the list does not have it; its info when it does, or when the list could not be
        read (then the upstream answers as it did before the gateway knew prompt lists)."""
        running = self._loading.get(upstream)
        if running is not None:
            listed = await asyncio.shield(running)  # a waiter's cancellation must not end the shared read
        else:
            future: asyncio.Future[dict[str, ToolInfo] | None] = asyncio.get_running_loop().create_future()
            self._loading[upstream] = future
            listed = None
            try:
                listed = await self._read(upstream, fetch)
            finally:
                del self._loading[upstream]
                future.set_result(listed)
        if listed is None:
            return self._info(upstream, name)
        return listed.get(name)

    async def _read(self, upstream: str, fetch: Fetch) -> dict[str, ToolInfo] | None:
        generation = self._generation[upstream]
        names: list[Any] = []
        cursor: Any = None
        for _ in range(MAX_PAGES):
            try:
                result = await fetch(upstream, "prompts/list", {"cursor": cursor} if cursor else {})
            except (GatewayError, UpstreamErrorResponse) as exc:
                log.info("prompts of %s unknown (%s): a prompt it does not list gets its own answer", upstream, exc)
                self._unknown(upstream, generation)
                return None
            items = result.get("prompts")
            if isinstance(items, list):
                names.extend(item.get("name") for item in items if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                if generation != self._generation[upstream]:  # learnt or dropped meanwhile: newer than this one
                    return {n: self._info(upstream, n) for n in names if isinstance(n, str)}
                return self.learn(upstream, names)
        log.info("prompts/list of %s has more than %d pages: its prompts are unknown", upstream, MAX_PAGES)
        self._unknown(upstream, generation)
        return None

    def _unknown(self, upstream: str, generation: int) -> None:
        if generation == self._generation[upstream]:  # else a list learnt meanwhile is newer news
            self._unreadable.add(upstream)
