"""A path `/mcp/<name>` naming no upstream: refused once the caller is identified (without a token as a configured
upstream refuses it), answering the request's own id when the body can be read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.core.test_http_content_codings import ACCEPT, CALL, INIT, post, reason
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio

@pytest.mark.parametrize(("raw", "answered_id"), [
    (json.dumps(CALL).encode(), 41),
    (json.dumps({**CALL, "id": "call-7"}).encode(), "call-7"),
    (json.dumps(INIT).encode(), 1),
    (b'{"jsonrpc": "2.0", "id": 9}', 9),  # malformed, but its id reads: as its invalid_request would answer
    # Not a request: nothing to answer with an id. A notification is refused as the gateway refuses any
    # notification at the HTTP level (session_required, unauthenticated): the error, id null (MCP: no id).
    (json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(), None),
    (json.dumps({"jsonrpc": "2.0", "id": 3, "result": {}}).encode(), None),
    (b"{oops", None),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', None),
    (b"", None),
])
async def test_an_unknown_upstream_answers_with_the_request_id(gw, http, raw, answered_id):
    """`/mcp/<name>` naming no upstream was refused before the body was read: id null, so a client waiting on
    its id never matched the answer to its call."""
    for path in ("nosuchupstream", "nosuchupstream/"):
        status, _, body = await post(http, f"{gw.mcp}/{path}", raw)
        assert status == 404 and reason(body) == "unknown_upstream", body
        assert body["error"]["code"] == -32019 and body["error"]["message"] == "Unknown upstream: nosuchupstream"
        assert "id" in body and body["id"] == answered_id, body


async def test_an_unknown_upstream_reads_no_more_than_the_body_limit(start_gateway, permissive_policies, http):
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                  "policies": {"dir": str(permissive_policies)}, "listen": {"max_body_bytes": 4096}})
        big = json.dumps({**CALL, "params": {**CALL["params"], "pad": "x" * 10_000}}).encode()
        status, _, body = await post(http, f"{gw.mcp}/nosuchupstream", big)
        assert status == 404 and reason(body) == "unknown_upstream" and body["id"] is None, body
        status, _, body = await post(http, f"{gw.mcp}/inventory", json.dumps(INIT).encode())  # still served
        assert status == 200, body


# -- identified first: without a token, an unknown name is answered as a configured one -------------------------

STREAM = {"Accept": "text/event-stream", "Mcp-Session-Id": "x"}


@pytest.fixture
async def jwt_gw(start_gateway, permissive_policies, tmp_path) -> AsyncIterator[tuple[Any, TestIssuer]]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(permissive_policies)}})
        yield gw, issuer


def credentials(gw: Any, issuer: TestIssuer, which: str) -> dict[str, str]:
    if which == "none":
        return {}
    if which == "bad":  # signed by the issuer, for another resource
        return {"Authorization": f"Bearer {issuer.mint('agent-1', aud='https://elsewhere.example/mcp', alg='ES256')}"}
    return {"Authorization": f"Bearer {issuer.mint('agent-1', aud=gw.mcp, alg='ES256')}"}


async def answer(http: aiohttp.ClientSession, method: str, url: str,
                 headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(INIT).encode() if method == "POST" else None
    async with http.request(method, url, data=data, headers=headers) as resp:
        text = await resp.text()
        return resp.status, dict(resp.headers), json.loads(text) if text else None


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
@pytest.mark.parametrize("which", ["none", "bad"])
async def test_an_unknown_upstream_is_401_to_an_unidentified_caller_as_a_known_one(jwt_gw, http, method, which):
    """`/mcp/<name>` answered 404 unknown_upstream before identifying the caller: anyone without a token told
    the configured names (401) from the others (404). An unknown name now gets the known one's 401, challenge
    included: its resource metadata pointer names the path asked, as a configured upstream's does."""
    gw, issuer = jwt_gw
    headers = {**(ACCEPT if method == "POST" else STREAM), **credentials(gw, issuer, which)}
    answers = {}
    for name in ("inventory", "nosuchupstream"):
        for path in (name, f"{name}/"):
            status, answer_headers, body = await answer(http, method, f"{gw.mcp}/{path}", headers)
            assert status == 401 and reason(body) == "unauthenticated", (name, status, body)
            challenge = answer_headers["WWW-Authenticate"]
            assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource/mcp/{name}"' in challenge
            answers[name] = (challenge.replace(name, "<name>"), body["error"], body["id"])
    assert answers["nosuchupstream"] == answers["inventory"]


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_an_unknown_upstream_is_404_to_an_identified_caller(jwt_gw, http, method):
    gw, issuer = jwt_gw
    headers = {**(ACCEPT if method == "POST" else STREAM), **credentials(gw, issuer, "good")}
    status, _, body = await answer(http, method, f"{gw.mcp}/nosuchupstream", headers)
    assert status == 404 and reason(body) == "unknown_upstream", body
    assert body["id"] == (1 if method == "POST" else None)  # a POST's own id, as d00dbe9 made it
    status, _, body = await answer(http, method, f"{gw.mcp}/inventory", headers)  # the same token is served
    assert (status, reason(body) if status != 200 else None) == (
        (200, None) if method == "POST" else (404, "session_not_found")), body


async def test_an_unknown_upstream_is_checked_after_what_a_known_one_checks_first(jwt_gw, http):
    """Whatever a configured upstream refuses before identifying (a wrong Content-Type, Accept), an unknown name
    refuses alike: an answer that differed there would tell the names apart too."""
    gw, _ = jwt_gw
    for headers, status in (({**ACCEPT, "Content-Type": "text/plain"}, 415), ({**ACCEPT, "Accept": "text/html"}, 406)):
        for name in ("inventory", "nosuchupstream"):
            got, _, body = await answer(http, "POST", f"{gw.mcp}/{name}", headers)
            assert got == status, (name, got, body)


@pytest.mark.parametrize("raw", ["a%22b", "x%0D%0Ay", "%C3%A9t%C3%A9", "a%2Fb", "a%20b"])
async def test_an_unknown_name_is_named_quoted_in_its_challenge(jwt_gw, http, raw):
    """The challenge names the path asked inside a quoted string: a name with a quote, a line break or a space
    is percent-encoded there (a configured name, `[a-z0-9_-]+`, reads the same either way)."""
    gw, issuer = jwt_gw
    status, headers, body = await answer(http, "POST", f"{gw.mcp}/{raw}", ACCEPT)
    assert status == 401 and reason(body) == "unauthenticated", body
    assert headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{gw.url}/.well-known/oauth-protected-resource/mcp/{raw}"')
    status, _, body = await answer(http, "POST", f"{gw.mcp}/{raw}", {**ACCEPT, **credentials(gw, issuer, "good")})
    assert status == 404 and reason(body) == "unknown_upstream" and body["id"] == 1, body


# -- the legacy SSE transport tells no names apart either: identified first as well -------------------------------

async def sse_answer(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """A `GET /sse…` refused (its JSON body), or accepted: 200 and its first line (the stream is then closed)."""
    async with http.get(url, headers=headers) as resp:
        if resp.status == 200:
            return 200, dict(resp.headers), await asyncio.wait_for(resp.content.readline(), 10)
        return resp.status, dict(resp.headers), json.loads(await resp.text())


@pytest.mark.parametrize("which", ["none", "bad"])
async def test_a_legacy_sse_unknown_upstream_is_401_to_an_unidentified_caller_as_a_known_one(jwt_gw, http, which):
    """`GET /sse/<name>` answered 404 unknown_upstream before identifying the caller, 401 for a configured name:
    the legacy transport told the names apart without a token. Both now get the same 401 and challenge."""
    gw, issuer = jwt_gw
    answers = {}
    for name in ("inventory", "nosuchupstream"):
        for path in (name, f"{name}/"):
            status, headers, body = await sse_answer(http, f"{gw.url}/sse/{path}", credentials(gw, issuer, which))
            assert status == 401 and reason(body) == "unauthenticated", (path, status, body)
            answers[path.replace(name, "<name>")] = (headers["WWW-Authenticate"], body)
    assert len(answers) == 2 and len({json.dumps(one, sort_keys=True) for one in answers.values()}) == 1, answers


async def test_a_legacy_sse_unknown_upstream_is_404_to_an_identified_caller(jwt_gw, http):
    gw, issuer = jwt_gw
    good = credentials(gw, issuer, "good")
    status, _, body = await sse_answer(http, f"{gw.url}/sse/nosuchupstream", good)
    assert status == 404 and reason(body) == "unknown_upstream" and body["id"] is None, body
    status, _, line = await sse_answer(http, f"{gw.url}/sse/inventory", good)  # the same token opens a known one
    assert (status, line) == (200, b"event: endpoint\n")


async def test_legacy_messages_identify_before_looking_the_session_up(jwt_gw, http):
    """`POST /messages` names no upstream, only a session: without a token a live session and a made-up one
    are the same 401, so the session ids cannot be probed either."""
    gw, issuer = jwt_gw
    async with http.get(f"{gw.url}/sse/inventory", headers=credentials(gw, issuer, "good")) as stream:
        assert stream.status == 200
        await asyncio.wait_for(stream.content.readline(), 10)
        endpoint = (await asyncio.wait_for(stream.content.readline(), 10)).decode().removeprefix("data: ").strip()
        answers = set()
        for target in (endpoint, "/messages?session_id=0123456789abcdef", "/messages"):
            status, headers, body = await post(http, gw.url + target, json.dumps(INIT).encode())
            assert status == 401 and reason(body) == "unauthenticated", (target, body)
            answers.add((headers["WWW-Authenticate"], json.dumps(body, sort_keys=True)))
        assert len(answers) == 1, answers
