"""RFC 9728 metadata of `/mcp/<name>`: published for any name, so it tells no configured upstream names apart."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.demo.servers import inventory_server
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio

WELL_KNOWN = "/.well-known/oauth-protected-resource"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def jwt_gw(start_gateway, permissive_policies, tmp_path) -> AsyncIterator[Any]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    async with run_http_server(inventory_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                   "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                   "policies": {"dir": str(permissive_policies)}})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def challenge_of(http: aiohttp.ClientSession, url: str) -> str:
    """Where the 401 of a POST to `url` without a token points (its `resource_metadata`)."""
    async with http.post(URL(url, encoded=True), data=json.dumps(INIT).encode(), headers=ACCEPT) as resp:
        assert resp.status == 401, await resp.text()
        return resp.headers["WWW-Authenticate"].split('resource_metadata="', 1)[1].split('"', 1)[0]


async def metadata(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(URL(url, encoded=True)) as resp:  # as written: the name's percent-encoding kept
        text = await resp.text()
        return resp.status, json.loads(text) if resp.status == 200 else text


async def test_metadata_is_published_for_any_name_as_for_a_configured_one(jwt_gw, http):
    """`…/oauth-protected-resource/mcp/<name>` answered 200 for a configured name and 404 for the others, to
    anyone: the names could be read off it. Any `/mcp/<name>` now has the document a configured one has."""
    gw = jwt_gw
    documents = {}
    for name in ("inventory", "nosuchupstream"):
        status, document = await metadata(http, f"{gw.url}{WELL_KNOWN}/mcp/{name}")
        assert status == 200 and document["resource"] == f"{gw.mcp}/{name}", (name, document)
        documents[name] = json.dumps(document).replace(name, "<name>")
    assert documents["nosuchupstream"] == documents["inventory"]
    for tail in ("/mcp/inventory/", "/mcp/nosuchupstream/", "/mcp/inventory/x", "/mcp/nosuchupstream/x", "/mcp/"):
        assert (await metadata(http, f"{gw.url}{WELL_KNOWN}{tail}"))[0] == 404, tail  # no such endpoint path


@pytest.mark.parametrize("raw", ["nosuchupstream", "a%22b", "x%0D%0Ay", "%C3%A9t%C3%A9", "a%2Fb", "a%20b"])
async def test_the_metadata_an_unknown_names_challenge_points_to_names_that_path(jwt_gw, http, raw):
    """What a 401 on `/mcp/<name>` points to answers, and its `resource` is the path asked (RFC 9728 §3.3):
    the name as the challenge writes it, percent-encoded (`a%2Fb` is one name, not the path `a/b`)."""
    gw = jwt_gw
    pointer = await challenge_of(http, f"{gw.mcp}/{raw}")
    assert pointer == f"{gw.url}{WELL_KNOWN}/mcp/{raw}"
    status, document = await metadata(http, pointer)
    assert status == 200 and document["resource"] == f"{gw.mcp}/{raw}", document
    if raw == "a%2Fb":
        assert (await metadata(http, f"{gw.url}{WELL_KNOWN}/mcp/a/b"))[0] == 404  # two segments: no endpoint
