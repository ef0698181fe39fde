"""What the owner lookup of bare resource URIs remembers (gateway/resource_owners.py): an upstream's list is
shared by all principals only when its credential is the same for everyone (mode none or static), else kept
per principal (at most `max_principals`, least recently used dropped); any list is asked again after
`ttl_s`. The lists come from a `fetch` standing in for the upstream request, the time from a settable clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.config.model import UpstreamConfig
from gateway.resource_owners import ResourceOwners

pytestmark = pytest.mark.asyncio


@dataclass
class Upstream:
    """Lists `<scheme>://<principal>` to each principal; counts the resources/list requests per principal."""

    now: float = 0.0
    lists: list[tuple[str, str]] = field(default_factory=list)  # (upstream, principal) per resources/list

    def fetcher(self, principal: str) -> Any:
        async def fetch(upstream: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
            if method == "resources/templates/list":
                return {"resourceTemplates": []}
            self.lists.append((upstream, principal))
            return {"resources": [{"uri": f"{upstream}://{principal}", "name": "mine"}]}
        return fetch


def owners(modes: dict[str, str], upstream: Upstream, **kwargs: Any) -> ResourceOwners:
    configs = {name: UpstreamConfig.model_validate({"name": name, "url": f"http://127.0.0.1/{name}",
                                                    "credentials": credentials(mode)})
               for name, mode in modes.items()}
    return ResourceOwners(configs, clock=lambda: upstream.now, **kwargs)


def credentials(mode: str) -> dict[str, Any]:
    if mode == "static":
        return {"mode": "static", "value_env": "CUSTOMS_TEST_UNSET"}
    return {"mode": mode}


async def test_per_principal_credentials_keep_each_principals_own_list() -> None:
    upstream = Upstream()
    lookup = owners({"minted": "minted"}, upstream)
    assert await lookup.owner("minted://alice", upstream.fetcher("alice"), "alice") == "minted"
    assert await lookup.owner("minted://alice", upstream.fetcher("bob"), "bob") is None
    assert await lookup.owner("minted://alice", upstream.fetcher("alice"), "alice") == "minted"
    assert upstream.lists == [("minted", "alice"), ("minted", "bob")]


@pytest.mark.parametrize("mode", ["none", "static"])
async def test_a_credential_the_same_for_everyone_shares_one_list(mode: str) -> None:
    upstream = Upstream()
    lookup = owners({"shared": mode}, upstream)
    assert await lookup.owner("shared://alice", upstream.fetcher("alice"), "alice") == "shared"
    assert await lookup.owner("shared://alice", upstream.fetcher("bob"), "bob") == "shared"
    assert upstream.lists == [("shared", "alice")]


async def test_a_list_is_asked_again_after_the_ttl() -> None:
    upstream = Upstream()
    lookup = owners({"shared": "none", "minted": "minted"}, upstream, ttl_s=60)
    for _ in range(2):
        assert await lookup.owner("shared://alice", upstream.fetcher("alice"), "alice") == "shared"
    assert len(upstream.lists) == 2  # one list of each upstream
    upstream.now = 59.9
    assert await lookup.owner("shared://alice", upstream.fetcher("alice"), "alice") == "shared"
    assert len(upstream.lists) == 2
    upstream.now = 60.0
    assert await lookup.owner("shared://alice", upstream.fetcher("alice"), "alice") == "shared"
    assert upstream.lists[2:] == [("shared", "alice"), ("minted", "alice")]


async def test_per_principal_lists_are_bounded_least_recently_used_first() -> None:
    upstream = Upstream()
    lookup = owners({"minted": "minted"}, upstream, max_principals=2)
    for principal in ("a", "b", "a", "c", "a", "b"):
        await lookup.owner(f"minted://{principal}", upstream.fetcher(principal), principal)
    # `b` was dropped for `c` (`a` had been used since); `a` stayed.
    assert [p for _, p in upstream.lists] == ["a", "b", "c", "b"]


async def test_list_changed_forgets_every_principals_list() -> None:
    upstream = Upstream()
    lookup = owners({"minted": "minted"}, upstream)
    for principal in ("a", "b"):
        await lookup.owner(f"minted://{principal}", upstream.fetcher(principal), principal)
    lookup.invalidate("minted")
    for principal in ("a", "b"):
        await lookup.owner(f"minted://{principal}", upstream.fetcher(principal), principal)
    assert [p for _, p in upstream.lists] == ["a", "b", "a", "b"]
