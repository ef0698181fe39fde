"""List methods across upstreams: fan-out, pagination cursors, and showing only what policy allows.

The aggregated `/mcp` view merges every upstream's first page; when upstreams have more pages the
cursor we hand out records each upstream's own cursor, so pagination continues per upstream.
Names of tools and prompts get the upstream's prefix; resource URIs and URI templates get the
upstream's name (`customs://inventory/inventory://skus`), so a later read, subscription or completion names its
server by itself and two servers listing the same URI show as two resources.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.authz.visibility import shown_in_tools_list
from gateway.catalog import Catalog, exposed_uri, usable_name
from gateway.context import Decision, Principal, ToolInfo
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.pinning import ToolGuard
from gateway.pipeline import Authorizer

log = logging.getLogger("customs.listing")

APPROVAL_MARK = "customs/approval_required"


@dataclass(frozen=True)
class ListKind:
    method: str
    key: str  # result array key
    action: str  # Cedar action deciding visibility
    prefixed: bool  # names get the upstream prefix in the aggregated view (else URIs get its namespace)
    name_field: str


LISTS: dict[str, ListKind] = {
    "tools/list": ListKind("tools/list", "tools", "call_tool", True, "name"),
    "prompts/list": ListKind("prompts/list", "prompts", "get_prompt", True, "name"),
    "resources/list": ListKind("resources/list", "resources", "read_resource", False, "uri"),
    "resources/templates/list": ListKind("resources/templates/list", "resourceTemplates", "read_resource", False,
                                         "uriTemplate"),
}

Fetch = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (upstream, params) -> result


def encode_cursor(pending: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(pending, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: Any, upstreams: list[str]) -> dict[str, str]:
    try:
        pending = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))
    except (ValueError, TypeError, RecursionError) as exc:  # the client's bytes: nesting past the parser's limit too
        raise GatewayError("invalid_params", "Invalid params: unknown cursor") from exc
    if not isinstance(pending, dict) or not all(k in upstreams and isinstance(v, str) for k, v in pending.items()):
        raise GatewayError("invalid_params", "Invalid params: unknown cursor")
    return pending


class Lister:
    """Lists one kind of item for a principal, filtered by policy."""

    def __init__(self, catalog: Catalog, authorizer: Authorizer, guard: ToolGuard) -> None:
        self._catalog = catalog
        self._authorizer = authorizer
        self._guard = guard
        self._unreachable: set[tuple[str, str]] = set()  # reported once each
        self._unmatched_labels: set[tuple[str, str]] = set()  # likewise

    def _info(self, kind: ListKind, upstream: str, item: dict[str, Any]) -> ToolInfo:
        if kind.method == "tools/list":
            info = self._catalog.tool(upstream, str(item.get("name")))
            if info is not None:
                return info
        name = str(item.get(kind.name_field, ""))
        if kind.action == "read_resource":
            return self._catalog.resource(upstream, name)
        return self._catalog.named(upstream, name)

    def filter(self, kind: ListKind, principal: Principal, upstream: str, items: list[Any],
               prefixed: bool) -> list[dict[str, Any]]:
        shown: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            info = self._info(kind, upstream, item)
            decision = self._authorizer.visible(principal, kind.action, info)
            if not self._shown(kind, principal, info, decision):
                continue
            out = dict(item)
            if prefixed:
                own = str(item.get(kind.name_field))
                if kind.prefixed:
                    exposed = self._catalog.exposed(upstream, own)
                    if not self._reachable(kind, upstream, own, exposed):
                        continue
                    out[kind.name_field] = exposed
                else:
                    out[kind.name_field] = exposed_uri(upstream, own)
            if decision.outcome == "approval_required":
                out["_meta"] = {**(item.get("_meta") or {}), APPROVAL_MARK: True}
            shown.append(out)
        return shown

    def _well_named(self, kind: ListKind, upstream: str, item: Any) -> bool:
        """An item whose name (URI) is a `usable_name`: another failed Cedar, and so the whole list."""
        if not isinstance(item, dict):
            return False
        name = item.get(kind.name_field)
        if usable_name(name):
            return True
        if (upstream, ascii(name)) not in self._unreachable:
            self._unreachable.add((upstream, ascii(name)))
            log.warning("%s from %s: item with unusable %s %s left out", kind.method, upstream, kind.name_field,
                        ascii(name)[:200])
        return False

    def _reachable(self, kind: ListKind, upstream: str, own: str, exposed: str) -> bool:
        """Whether a call naming `exposed` reaches this very item. With overlapping prefixes (`a__` and
        `a__b__`, or a custom `prefix`) one upstream's `b__pay` and another's `pay` both read `a__b__pay`:
        calls go to the longest prefix, so the other entry would only lend that name its description (a
        server shadowing another's tool) and is left out, as is an empty name (the bare prefix)."""
        if self._catalog.resolve(exposed) == (upstream, own):
            return True
        if (upstream, own) not in self._unreachable:
            self._unreachable.add((upstream, own))  # upstreams are configured: bounded by what they list
            log.warning("%s %s/%s not listed in the aggregated view: %r names %s", kind.method[:-5], upstream,
                        own, exposed, "another upstream's item" if self._catalog.resolve(exposed) else "nothing")
        return False

    def _shown(self, kind: ListKind, principal: Principal, info: ToolInfo, call: Decision) -> bool:
        """A tool shows as `shown_in_tools_list` says (`customs policy explain --action list_tools` applies the
        same rule); a prompt or resource when its `get_prompt` / `read_resource` is not denied."""
        if kind.method != "tools/list":
            return call.outcome != "deny"
        return shown_in_tools_list(self._authorizer.visible(principal, "list_tools", info), call)

    async def one(self, kind: ListKind, principal: Principal, upstream: str, params: dict[str, Any],
                  fetch: Fetch) -> dict[str, Any]:
        """Pass-through view: the upstream's page (cursor unchanged), filtered."""
        result = await fetch(upstream, params)
        items = result.get(kind.key) if isinstance(result.get(kind.key), list) else []
        assert isinstance(items, list)
        items = await self._learn(kind, upstream, items,
                                  complete=not params.get("cursor") and not result.get("nextCursor"))
        return {**result, kind.key: self.filter(kind, principal, upstream, items, prefixed=False)}

    async def merged(self, kind: ListKind, principal: Principal, upstreams: list[str], params: dict[str, Any],
                     fetch: Fetch) -> dict[str, Any]:
        """Aggregated view: every upstream's page merged. An upstream failing its first page is skipped; one
        failing a later page keeps its cursor (asked again with the next page), and a page on which no
        upstream answers is that failure, so a list cut short never passes for the whole list."""
        cursor = params.get("cursor")
        pending = decode_cursor(cursor, upstreams) if cursor is not None else dict.fromkeys(upstreams, "")
        base = {k: v for k, v in params.items() if k != "cursor"}

        async def page(upstream: str, upstream_cursor: str) -> tuple[str, dict[str, Any] | Exception]:
            query = {**base, "cursor": upstream_cursor} if upstream_cursor else base
            try:
                return upstream, await fetch(upstream, query)
            except (GatewayError, UpstreamErrorResponse) as exc:
                _report(kind, upstream, upstream_cursor, exc)
                return upstream, exc

        pages = await asyncio.gather(*(page(u, c) for u, c in pending.items()))
        items: list[dict[str, Any]] = []
        remaining: dict[str, str] = {}
        failed: list[Exception] = []
        for upstream, result in pages:
            if isinstance(result, Exception):
                if pending[upstream]:  # its earlier pages were listed: dropping the cursor would end it short
                    remaining[upstream] = pending[upstream]
                    failed.append(result)
                continue
            found = result.get(kind.key) if isinstance(result.get(kind.key), list) else []
            assert isinstance(found, list)
            next_cursor = result.get("nextCursor")
            found = await self._learn(kind, upstream, found, complete=not pending[upstream] and not next_cursor)
            items.extend(self.filter(kind, principal, upstream, found, prefixed=True))
            if isinstance(next_cursor, str) and next_cursor:
                remaining[upstream] = next_cursor
        if failed and all(isinstance(result, Exception) for _, result in pages):
            raise failed[0]  # nothing else is left to list: the agent keeps its cursor and may ask again
        out: dict[str, Any] = {kind.key: items}
        if remaining:
            out["nextCursor"] = encode_cursor(remaining)
        return out

    async def _learn(self, kind: ListKind, upstream: str, items: list[Any], *, complete: bool) -> list[Any]:
        """Tools pass the pin check before anyone sees them; the catalog learns only usable ones."""
        items = [item for item in items if self._well_named(kind, upstream, item)]
        if kind.method == "prompts/list" and complete:  # what a prompts/get of a prompt not listed answers
            self._catalog.prompts.learn(upstream, (item.get("name") for item in items))
        if kind.method != "tools/list":
            return items
        if complete:
            self._warn_unmatched_labels(upstream, items)
        verdict = await self._guard.check(upstream, [i for i in items if isinstance(i, dict)])
        self._catalog.update(upstream, verdict.usable, replace=complete)
        return verdict.usable


    def _warn_unmatched_labels(self, upstream: str, items: list[Any]) -> None:
        """A label keyed by a name the upstream lists no tool under (`list_sku` for `list_skus`) labels nothing: a
        `sensitivity: restricted` meant for the tool never reaches a policy. Config check cannot know the tools, so
        this says so (once a key) when the whole list is known. Resource URIs and templates (`://`, `{`) are not
        tools; a prompt's label is named too, so the text says to ignore it then."""
        names = sorted(str(item.get("name")) for item in items if isinstance(item, dict))
        shown = ", ".join(names[:20]) + (", ..." if names[20:] else "") or "none"
        index = self._catalog.upstream_names.index(upstream)
        for key in self._catalog.config(upstream).tools:
            if key in names or "://" in key or "{" in key or (upstream, key) in self._unmatched_labels:
                continue
            self._unmatched_labels.add((upstream, key))
            log.warning("upstreams[%d].tools.%s: %s lists no tool of that name (its tools: %s), so these labels "
                        "apply to no tool (a sensitivity: restricted meant for one included); ignore this if they "
                        "label a prompt", index, key, upstream, shown)


def _report(kind: ListKind, upstream: str, cursor: str, exc: Exception) -> None:
    """A failed first page leaves the upstream out of this list (INFO: /readyz and the upstream's own errors
    say more); a failed later page leaves the list incomplete until it is answered, which is worth a WARNING."""
    if cursor:
        log.warning("%s from %s failed on a later page (%s): its cursor is kept, the list is incomplete until "
                    "that page is answered", kind.method, upstream, exc)
    else:
        log.info("%s from %s skipped: %s", kind.method, upstream, exc)
