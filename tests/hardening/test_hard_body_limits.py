"""`listen.max_body_bytes` against a real gateway process, for bodies whose size on the wire is not their size.

A compressed body (Content-Encoding gzip/deflate) is inflated by aiohttp as it is read: its Content-Length is
under the limit and what it inflates to is not. aiohttp refuses that itself, with a text/plain 413 that is no
JSON-RPC error and names no reason; every route answers it in its own shape now, as a plain oversized body.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ACCEPT, RawClient, Recorder, reason
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
LIMIT = 4096


def call(pad: int, request_id: int = 5) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": "rec__lookup", "arguments": {"sku": "widget", "pad": "x" * pad}}}).encode()


async def test_a_compressed_body_inflating_past_the_limit_is_body_too_large_on_every_route(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path,
        permissive_policies: Path) -> None:
    recorder, url = upstream
    issuer = TestIssuer(tmp_path)
    gw = await spawn_gateway({"listen": {"max_body_bytes": LIMIT},
                              "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                              "upstreams": [{"name": "rec", "url": url}],
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    bearer = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['admins'])}"}
    client = RawClient(http, gw.mcp, bearer)
    await client.initialize()

    inflating = call(100_000)
    for encoding, data in (("gzip", gzip.compress(inflating)), ("deflate", zlib.compress(inflating))):
        assert len(data) < LIMIT
        status, _, body = await client.post(raw=data, headers={"Content-Encoding": encoding})
        assert status == 413 and reason(body) == "body_too_large", (encoding, status, body)
        assert body["error"]["code"] == -32014
    # A compressed body inside the limit is read as any other.
    status, _, body = await client.post(raw=gzip.compress(call(100, 6)), headers={"Content-Encoding": "gzip"})
    assert status == 200 and body["result"]["content"][0]["text"] == "ran lookup", body
    assert recorder.calls == [("lookup", {"sku": "widget", "pad": "x" * 100})]

    bomb = gzip.compress(b'{"comment": "' + b"x" * 100_000 + b'"}')
    as_json = {**bearer, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(f"{gw.url}/api/approvals/apr_0/approve", data=bomb, headers=as_json) as resp:
        assert resp.status == 413 and (await resp.json())["error"]["reason"] == "body_too_large"
    async with http.post(f"{gw.url}/api/tools/rec/lookup/approve", data=bomb, headers=as_json) as resp:
        assert resp.status == 413 and (await resp.json()) == {"error": {"reason": "body_too_large"}}
    form = {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}
    async with http.post(f"{gw.url}/oauth/introspect", data=gzip.compress(b"token=" + b"x" * 100_000),
                         headers=form) as resp:
        assert resp.status == 413 and (await resp.json())["error"] == "invalid_request"  # RFC 6749's shape
    # Plainly oversized bodies (no compression) get the same answers.
    async with http.post(f"{gw.url}/api/tools/rec/lookup/approve", data=b'{"hash": "' + b"0" * LIMIT + b'"}',
                         headers={**bearer, "Content-Type": "application/json"}) as resp:
        assert resp.status == 413 and (await resp.json()) == {"error": {"reason": "body_too_large"}}
    status, _, body = await client.post(raw=call(LIMIT))
    assert status == 413 and reason(body) == "body_too_large", body


async def test_a_compressed_body_on_the_legacy_messages_endpoint_is_body_too_large(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession,
        permissive_policies: Path) -> None:
    _recorder, url = upstream
    gw = await spawn_gateway({"listen": {"max_body_bytes": LIMIT}, "upstreams": [{"name": "rec", "url": url}],
                              "identity": {"mode": "anonymous"},
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    async with http.get(f"{gw.url}/sse", headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status == 200
        endpoint = None
        async for line in stream.content:
            if line.startswith(b"data:"):
                endpoint = line[5:].strip().decode()
                break
        assert endpoint is not None
        async with http.post(f"{gw.url}{endpoint}", data=gzip.compress(call(100_000)),
                             headers={**ACCEPT, "Content-Encoding": "gzip"}) as resp:
            assert resp.status == 413, await resp.text()
            assert reason(await resp.json()) == "body_too_large"


async def test_a_body_that_cannot_be_decoded_is_a_parse_error_and_ends_the_connection(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path,
        permissive_policies: Path) -> None:
    """Corrupt gzip or deflate made aiohttp's read raise out of every handler: a text/plain 500 and an ERROR
    traceback per request (twice: aiohttp read the rest of the body after the answer), and the connection was
    dropped under the client's next request. It is now 400 parse_error (each route in its own shape), with
    `Connection: close`, and nothing logged at ERROR."""
    recorder, url = upstream
    issuer = TestIssuer(tmp_path)
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}],
                              "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    bearer = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['admins'])}"}
    client = RawClient(http, gw.mcp, bearer)
    await client.initialize()
    corrupt = {"gzip": b"\x1f\x8b\x08" + b"not gzip at all" * 4, "deflate": b"not deflate at all" * 4}
    for encoding, data in corrupt.items():
        status, headers, body = await client.post(raw=data, headers={"Content-Encoding": encoding})
        assert status == 400 and reason(body) == "parse_error", (encoding, status, body)
        assert headers.get("Connection", "").lower() == "close", headers
        status, _, body = await client.call("rec__lookup", {"sku": "widget"}, request_id=9)  # the next one is served
        assert status == 200 and "result" in body, body
    assert recorder.calls == [("lookup", {"sku": "widget"})] * 2
    as_json = {**bearer, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(f"{gw.url}/api/tools/rec/lookup/approve", data=corrupt["gzip"], headers=as_json) as resp:
        assert resp.status == 400 and (await resp.json()) == {"error": {"reason": "parse_error"}}
    async with http.post(f"{gw.url}/api/approvals/apr_0/approve", data=corrupt["gzip"], headers=as_json) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["reason"] == "parse_error"
    async with http.post(f"{gw.url}/oauth/introspect", data=corrupt["gzip"], headers={
            "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
    log = gw.log_path.read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
