"""Re-verifies tool pins in the background: every upstream's tool list is re-read at a bounded interval.

Clients learn a tool list only when they ask for one (or after `notifications/tools/list_changed`),
and a call uses the catalog once it is loaded. An upstream that changes a tool silently would
otherwise keep serving calls to the changed tool. Every `pinning.verify_interval_s` the watcher
re-lists the tools of each upstream the catalog has loaded, over a session of the gateway's own,
checks them against the pins (a changed tool is quarantined there and then) and replaces the
catalog's list with the usable tools, so a call to a quarantined tool is refused from then on. The
same pass brings back tools an administrator re-approved on another replica.

A list is installed only if nothing moved the catalog while it was fetched (a `list_changed`, a
re-approval, a newer list): the catalog's generation, read before the fetch, must be unchanged.

An upstream whose credential belongs to a principal (`minted`, `token_exchange`) cannot be listed by
the gateway on its own behalf, and it is left alone: its loaded list stays in use and is re-verified
when a client lists tools or the upstream sends `list_changed`. Dropping it instead would put a full
tools/list and pin check into the next tools/call, every interval. A failed pass drops the entry, so
the next use re-lists it on the caller's behalf, pin check first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway.catalog import MAX_TOOL_PAGES, Catalog
from gateway.credentials.static import StaticCredentials
from gateway.errors import GatewayError
from gateway.pinning import ToolGuard
from gateway.router import UpstreamCall
from gateway.transport.base import ConnectParams, Message, Upstream

log = logging.getLogger("customs.pinning")

# upstream -> the headers the gateway may send on its own behalf, or None when it has none to send
OwnHeaders = Callable[[str], Mapping[str, str] | None]


SELF_LISTED = frozenset({"none", "static"})  # credential modes the gateway can list an upstream with itself

def gateway_headers(catalog: Catalog, static: StaticCredentials) -> OwnHeaders:
    """The credential the gateway holds for an upstream itself: nothing (`none`) or the `static` header;
    None for per-principal modes, which need a caller."""
    def headers(upstream: str) -> Mapping[str, str] | None:
        mode = catalog.config(upstream).credentials.mode
        if mode == "static":
            name, value = static.header(upstream)
            return {name: value}
        return {} if mode == "none" else None
    return headers


class PinWatcher:
    """Owned by the app lifecycle: `start` launches the periodic pass, `close` stops it."""

    def __init__(self, catalog: Catalog, guard: ToolGuard, upstreams: Mapping[str, Upstream], interval_s: float,
                 own_headers: OwnHeaders, *, upstream_call: UpstreamCall | None = None,
                 scrub: Callable[[Any], Any] | None = None) -> None:
        self._catalog = catalog
        # As Router.fetch scrubs the lists it pins: a description quoting the gateway's key must hash the same here.
        self._scrub = scrub
        self._guard = guard
        self._upstreams = upstreams
        self._interval_s = interval_s
        self._own_headers = own_headers
        self._upstream_call = upstream_call
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="customs-pin-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.verify_all()
            except Exception:  # a pass that fails must not end the watcher: the checks would stop silently
                log.exception("pin re-verification pass failed; retrying next interval")

    async def verify_all(self) -> None:
        """One pass over every upstream whose tools the catalog holds and the gateway can list itself (the
        others are checked when listed)."""
        # Chosen by mode, not by fetching the header: a static key that cannot be read now (mid-rotation)
        # is that upstream's failure inside `_verify`, not the end of the pass.
        loaded = [name for name in self._catalog.upstream_names
                  if self._catalog.loaded(name) and self._catalog.config(name).credentials.mode in SELF_LISTED]
        await asyncio.gather(*(self._verify(name) for name in loaded))

    async def _verify(self, upstream: str) -> None:
        generation = self._catalog.generation(upstream)
        try:
            headers = self._own_headers(upstream)
            if headers is None:
                raise GatewayError("credential_unavailable", "no credential of the gateway's own")
            tools = await self._list(upstream, dict(headers))
            verdict = await self._guard.check(upstream, tools)
        except Exception as exc:  # any failure: the next use re-lists on the caller's behalf
            log.info("pin re-verification of %s failed (%s); it re-lists on next use", upstream, exc)
            self._catalog.invalidate(upstream)
            return
        self._catalog.update(upstream, verdict.usable, generation=generation)

    async def _list(self, upstream: str, headers: dict[str, str]) -> list[dict[str, Any]]:
        timeout = self._catalog.config(upstream).timeout_s

        async def ignore(message: Message) -> None:
            return None  # this session asks one question; nothing the upstream volunteers concerns a client

        async def credentials() -> dict[str, str]:
            return dict(headers)

        async with asyncio.timeout(timeout):
            session = await self._upstreams[upstream].connect(ConnectParams(internal=True), ignore, headers,
                                                              credentials=credentials)
        try:
            tools: list[dict[str, Any]] = []
            cursor: str | None = None
            for page in range(MAX_TOOL_PAGES):
                message = {"jsonrpc": "2.0", "id": f"customs-pins-{page}", "method": "tools/list",
                           "params": {"cursor": cursor} if cursor else {}}
                if self._upstream_call is None:
                    answer = await session.request(message, headers=dict(headers), timeout=timeout)
                else:
                    answer = await self._upstream_call(upstream, session, message, dict(headers), None, timeout)
                if self._scrub is not None:
                    answer = self._scrub(answer)
                result = answer.get("result")
                if not isinstance(result, dict):
                    raise GatewayError("upstream_error", "tools/list answered without a result")
                tools.extend(t for t in result.get("tools") or [] if isinstance(t, dict))
                cursor = result.get("nextCursor")
                if not cursor:
                    return tools
            raise GatewayError("upstream_error", f"tools/list had more than {MAX_TOOL_PAGES} pages")
        finally:
            async with asyncio.timeout(timeout):
                await session.close()
