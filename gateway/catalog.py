"""What each upstream offers (tools, prompts, resources), as policy sees it, and how names map.

Tool definitions are learned from the upstreams' own list results and labelled with config
overrides (`upstreams[].tools`). In the aggregated view names carry the upstream's prefix
(`inventory__get_stock`) and resource URIs and URI templates the upstream's name
(`customs://inventory/inventory://skus`), so two servers can never shadow each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.config.model import ToolOverride, UpstreamConfig
from gateway.context import ToolInfo, canonical_json
from gateway.errors import GatewayError
from gateway.prompt_list import PromptLists
from gateway.resource_owners import ResourceOwners
from gateway.uri_templates import expands_to

# ToolInfo attributes an upstream's MCP annotations set (unless config fixes them), by hint name.
ANNOTATED: Final = {"read_only": "readOnlyHint", "destructive": "destructiveHint", "idempotent": "idempotentHint",
             "open_world": "openWorldHint"}


def usable_name(value: Any) -> bool:
    """A name or URI an agent can ask for: a string of valid Unicode. Anything else an upstream lists (a
    number, a lone surrogate from a JSON escape) names nothing callable and would fail Redis and Cedar."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# For definitions canonical JSON refuses: an upstream's NaN or Infinity (which its JSON may carry) is
# hashed as the text Python writes for it instead of failing the upstream's whole list.
_LENIENT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def definition_hash(tool: Mapping[str, Any]) -> str:
    """Pin of a tool: sha256 over name, description, input schema and annotations.

    Total over anything an upstream's list parses to: a definition that failed to hash used to make the
    upstream's tools uncallable and the aggregated tools/list an internal_error for every upstream's tools.
    Definitions of valid Unicode and finite numbers hash exactly as before (pins stay valid)."""
    pinned = {k: tool.get(k) for k in ("name", "description", "inputSchema", "annotations")}
    try:
        text = canonical_json(pinned)
    except ValueError:
        text = _LENIENT.encode(pinned)
    # surrogatepass: a lone surrogate (a JSON escape no UTF-8 holds) hashes instead of raising.
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tool_info(upstream: UpstreamConfig, tool: Mapping[str, Any]) -> ToolInfo:
    """ToolInfo from an MCP tool definition: annotations (spec defaults) overridden by config."""
    name = str(tool.get("name", ""))
    ann = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else {}
    assert isinstance(ann, dict)
    # Only a boolean hint counts (as in pick below): `"false"` as text must not make destructiveHint default off.
    read_only = ann.get("readOnlyHint") is True
    override = upstream.tools.get(name)

    def pick(attr: str, hint: str, default: bool) -> bool:
        value = getattr(override, attr) if override is not None else None
        if value is not None:
            return bool(value)
        raw = ann.get(hint)
        return bool(raw) if isinstance(raw, bool) else default

    return ToolInfo(
        upstream=upstream.name,
        name=name,
        read_only=pick("read_only", "readOnlyHint", False),
        # Spec: destructiveHint/idempotentHint are meaningful only when not read-only.
        destructive=pick("destructive", "destructiveHint", not read_only),
        idempotent=pick("idempotent", "idempotentHint", False),
        open_world=pick("open_world", "openWorldHint", True),
        sensitivity=(override.sensitivity if override and override.sensitivity else "internal"),
        leaves_org=bool(override.leaves_org) if override and override.leaves_org is not None else False,
        definition=dict(tool),
    )


# The stricter value of a boolean label, for a URI that several labelled URI templates match.
STRICTER: Final = {"read_only": False, "destructive": True, "idempotent": False, "open_world": True,
                   "leaves_org": True}
SENSITIVITIES: Final = ("public", "internal", "confidential", "restricted")  # least to most sensitive
# An upstream's tools/list pages read at most (the router's load and the pin watch): more is upstream_error.
MAX_TOOL_PAGES: Final = 100


def resource_labels(upstream: UpstreamConfig, uri: str) -> ToolOverride | None:
    """Config labels of a resource URI: its own entry's, and for each label that leaves unset, the
    labelled URI templates' it expands from (the stricter value when several set it). Otherwise a
    label on a template would not reach the reads of its URIs, which policy decides by the URI."""
    own = upstream.tools.get(uri)
    templates = [o for key, o in upstream.tools.items() if key != uri and expands_to(key, uri)]
    if not templates:
        return own
    labels: dict[str, Any] = {}
    for attr in ("sensitivity", *STRICTER):
        if own is not None and getattr(own, attr) is not None:
            continue
        values = [getattr(o, attr) for o in templates if getattr(o, attr) is not None]
        if not values:
            continue
        if attr == "sensitivity":
            labels[attr] = max(values, key=SENSITIVITIES.index)
        else:
            labels[attr] = STRICTER[attr] if STRICTER[attr] in values else values[0]
    return (own or ToolOverride()).model_copy(update=labels)


def named_info(upstream: UpstreamConfig, name: str, *, resource: bool = False) -> ToolInfo:
    """A prompt or resource (its URI, or URI template) as a policy resource: read-only, not destructive,
    closed-world, `internal`, unless `upstreams[].tools.<name>` labels it otherwise (a resource URI also
    by the labelled URI templates it expands from)."""
    override = resource_labels(upstream, name) if resource else upstream.tools.get(name)

    def pick(attr: str, default: bool) -> bool:
        value = getattr(override, attr) if override is not None else None
        return default if value is None else bool(value)

    return ToolInfo(
        upstream=upstream.name, name=name, read_only=pick("read_only", True), destructive=pick("destructive", False),
        idempotent=pick("idempotent", False), open_world=pick("open_world", False),
        sensitivity=(override.sensitivity if override and override.sensitivity else "internal"),
        leaves_org=pick("leaves_org", False),
    )


def annotation_variants(upstream: UpstreamConfig, name: str) -> tuple[ToolInfo, ...]:
    """Every labelling a tool of this name could get once its annotations are known: the config's labels
    fixed, each annotation-set attribute config leaves open taken both ways. The first is the spec defaults'."""
    base = tool_info(upstream, {"name": name})
    override = upstream.tools.get(name)
    open_attrs = [a for a in ANNOTATED if override is None or getattr(override, a) is None]
    variants = [base]
    for values in itertools.product((False, True), repeat=len(open_attrs)):
        labels: dict[str, Any] = dict(zip(open_attrs, values, strict=True))
        variant = dataclasses.replace(base, **labels)
        if variant != base:
            variants.append(variant)
    return tuple(variants)


# action -> (reason, message prefix) of the answer for an item that does not exist.
NOT_FOUND: Final = {"call_tool": ("unknown_tool", "Unknown tool: "),
                    "get_prompt": ("unknown_prompt", "Unknown prompt: "),
                    "read_resource": ("unknown_resource", "Resource not found: ")}


def not_found(action: str, name: str) -> GatewayError:
    """The answer for an item that does not exist, by the action on it; a denial answers exactly this too."""
    reason, prefix = NOT_FOUND.get(action, NOT_FOUND["call_tool"])
    return GatewayError(reason, prefix + name)


# The aggregated view's resource URIs: `customs://<upstream>/<the upstream's own URI or URI template>`. A
# dedicated scheme, because a separator inside a scheme (`git+ssh://`) could also be an upstream's own;
# upstream names hold no `/`, so the first `/` after the name ends it whatever the upstream's URI holds.
# The upstream's URI is kept verbatim, not encoded: a template stays a template whose variables a client
# expands (percent-encoding them in its values as RFC 6570 says), and what it expands to maps back as is.
URI_SCHEME: Final = "customs://"


def exposed_uri(upstream: str, uri: str) -> str:
    """A resource URI or URI template of an upstream as the aggregated view shows it."""
    return f"{URI_SCHEME}{upstream}/{uri}"


def split_uri(exposed: str) -> tuple[str, str] | None:
    """`customs://<name>/<uri>` → (name, uri), whether or not an upstream has that name; else None."""
    if exposed[:len(URI_SCHEME)].lower() != URI_SCHEME:  # schemes are case-insensitive (RFC 3986)
        return None
    name, sep, uri = exposed[len(URI_SCHEME):].partition("/")
    return (name, uri) if sep else None


PENDING_TOOL: Final = "pending_tool"  # CallContext.extra key of a PendingTool
# CallContext.extra key of a tools/call's `() -> ToolInfo | None`: the tool's usable definition now (None: quarantined
# or gone), for the re-check of a call released after it was held for approval.
CURRENT_TOOL: Final = "current_tool"


@dataclass(frozen=True)
class PendingTool:
    """A tool called before its upstream's list is known: what it could be, and how to learn what it is.

    The authorize stage decides on `variants` first, so a call denied whatever the annotations say
    reaches no upstream (learning the list is a request, with a credential, on the caller's behalf)."""

    variants: tuple[ToolInfo, ...]
    load: Callable[[], Awaitable[ToolInfo | None]]


# Lists an upstream's tools and runs the pin check: the usable tool definitions.
FetchTools = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass
class UpstreamCatalog:
    """The last known tool list of one upstream."""

    tools: dict[str, ToolInfo] = field(default_factory=dict)
    loaded: bool = False
    # Moves with every invalidation and every complete list installed, so a list fetched across one
    # (a list_changed, a re-approval, a newer list) is not installed over it.
    generation: int = 0
    # The fetch in progress on some caller's behalf, shared by callers arriving meanwhile; its result
    # is None when it failed (the others then fetch with their own credentials).
    loading: asyncio.Future[dict[str, ToolInfo] | None] | None = None
    waiters: int = 0  # callers awaiting `loading` (how many calls one upstream list is holding up)


class Catalog:
    """Tool knowledge for all upstreams, shared by every session (definitions are per server)."""

    def __init__(self, upstreams: Iterable[UpstreamConfig]) -> None:
        self._configs = {u.name: u for u in upstreams}
        self._by_upstream: dict[str, UpstreamCatalog] = {name: UpstreamCatalog() for name in self._configs}
        self.resource_owners = ResourceOwners(self._configs)
        self.prompts = PromptLists(self._configs, self.named)
        # Longest prefix first so `a_b__` never loses to `a__`.
        self._prefixes = sorted(((u.tool_prefix, u.name) for u in self._configs.values()),
                                key=lambda p: len(p[0]), reverse=True)

    def config(self, upstream: str) -> UpstreamConfig:
        return self._configs[upstream]

    @property
    def upstream_names(self) -> list[str]:
        return list(self._configs)

    def update(self, upstream: str, tools: Iterable[Mapping[str, Any]], *, replace: bool = True,
               generation: int | None = None) -> list[ToolInfo]:
        """Learn an upstream's tools: a complete list replaces, a page merges. Returns the new infos.

        With `generation` (read before the list was fetched) a complete list is installed only if
        the upstream's generation has not moved since; the infos are returned either way."""
        config = self._configs[upstream]
        infos = [tool_info(config, t) for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
        entry = self._by_upstream[upstream]
        if replace:
            if generation is None or generation == entry.generation:
                entry.tools = {info.name: info for info in infos}
                entry.loaded = True
                entry.generation += 1
        else:
            entry.tools.update((info.name, info) for info in infos)
        return infos

    def generation(self, upstream: str) -> int:
        """Pass to `update` with a list fetched from now on."""
        return self._by_upstream[upstream].generation

    def invalidate(self, upstream: str) -> None:
        entry = self._by_upstream[upstream]
        entry.loaded = False
        entry.generation += 1

    def drop(self, upstream: str | None) -> None:
        """Another replica changed `upstream`'s pins (None: any upstream's, the news may be lost): re-list
        before the next use. A name this gateway does not serve is ignored."""
        for name in self._by_upstream if upstream is None else [upstream] if upstream in self._by_upstream else []:
            self.invalidate(name)

    async def load(self, upstream: str, fetch: FetchTools) -> dict[str, ToolInfo]:
        """The upstream's usable tools: the loaded list, else one `fetch` shared by every caller that
        arrives while it runs (a burst of calls must not each list the upstream). A caller that waited
        on a fetch that failed fetches on its own: the failure may be the first caller's credential."""
        entry = self._by_upstream[upstream]
        if entry.loaded:
            return entry.tools
        running = entry.loading
        if running is not None:
            entry.waiters += 1
            try:
                shared = await asyncio.shield(running)  # a waiter's cancellation must not end the shared fetch
            finally:
                entry.waiters -= 1
            return shared if shared is not None else await self._fetch(upstream, fetch)
        future: asyncio.Future[dict[str, ToolInfo] | None] = asyncio.get_running_loop().create_future()
        entry.loading = future
        tools: dict[str, ToolInfo] | None = None
        try:
            tools = await self._fetch(upstream, fetch)
            return tools
        finally:
            entry.loading = None
            future.set_result(tools)

    async def _fetch(self, upstream: str, fetch: FetchTools) -> dict[str, ToolInfo]:
        generation = self.generation(upstream)
        infos = self.update(upstream, await fetch(), generation=generation)
        return {info.name: info for info in infos}

    def loaded(self, upstream: str) -> bool:
        return self._by_upstream[upstream].loaded

    def waiting(self, upstream: str) -> int:
        """Callers waiting for a tool list being fetched on another caller's behalf."""
        return self._by_upstream[upstream].waiters

    def tool(self, upstream: str, name: str) -> ToolInfo | None:
        return self._by_upstream[upstream].tools.get(name)

    def lists(self, name: str, view: str | None) -> bool:
        """Whether a tool name as an agent used it (prefixed in the aggregated view `None`, else the upstream's
        own) is in its upstream's last known list: a name telemetry may record as a metric value."""
        target = self.resolve(name) if view is None else (view, name)
        return target is not None and target[0] in self._by_upstream and self.tool(*target) is not None

    def tools(self, upstream: str) -> list[ToolInfo]:
        return list(self._by_upstream[upstream].tools.values())

    def named(self, upstream: str, name: str) -> ToolInfo:
        """A prompt of this upstream as policy sees it (config labels by name)."""
        return named_info(self._configs[upstream], name)

    def resource(self, upstream: str, uri: str) -> ToolInfo:
        """A resource URI or URI template of this upstream as policy sees it (config labels by URI, and
        by the labelled URI templates the URI expands from)."""
        return named_info(self._configs[upstream], uri, resource=True)

    def variants(self, upstream: str, name: str) -> tuple[ToolInfo, ...]:
        return annotation_variants(self._configs[upstream], name)

    def exposed(self, upstream: str, name: str) -> str:
        return self._configs[upstream].tool_prefix + name

    def resolve_uri(self, exposed: str) -> tuple[str, str] | None:
        """Aggregated resource URI (or URI template) → (upstream, upstream's own URI), or None when it
        names no upstream. Needs nothing listed first: the owner is part of the URI."""
        target = split_uri(exposed)
        if target is None or not target[1] or target[0] not in self._configs:
            return None
        return target

    def names_upstream(self, uri: str) -> bool:
        """Whether a URI starts with `customs://<configured upstream>/` (else it may be an upstream's own)."""
        target = split_uri(uri)
        return target is not None and target[0] in self._configs

    def resolve(self, exposed_name: str) -> tuple[str, str] | None:
        """Aggregated name → (upstream, upstream's own name), or None if no prefix matches."""
        for prefix, upstream in self._prefixes:
            if exposed_name.startswith(prefix) and len(exposed_name) > len(prefix):
                return upstream, exposed_name[len(prefix):]
        return None
