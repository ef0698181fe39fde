"""A body in a content coding the gateway does not decode: 415 in the JSON-RPC error shape, with an `Accept-Encoding`
naming what it does decode (RFC 9110 §12.5.3, §15.5.16); gzip and deflate bodies are read as ever."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from typing import Any

import aiohttp
import pytest
from aiohttp import compression_utils

from gateway.demo.servers import inventory_server
from tests.core.test_http_edge import post as edge_post
from tests.lifecycle.test_life_refusals_metric import refused
from tests.support.servers import run_http_server, scripted_upstream

pytestmark = pytest.mark.asyncio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
        "params": {"name": "inventory__get_stock", "arguments": {"sku": "A-1"}}}
# What aiohttp decodes in this process: br and zstd only with their optional modules (neither is a dependency).
DECODED = {"gzip", "deflate"} | ({"br"} if compression_utils.HAS_BROTLI else set()) | (
    {"zstd"} if compression_utils.HAS_ZSTD else set())


async def post(http: aiohttp.ClientSession, url: str, raw: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """The edge tests' POST of raw bytes (`test_http_edge.post`)."""
    return await edge_post(http, url, None, headers, raw=raw)


def reason(body: Any) -> Any:
    return body["error"]["data"]["reason"] if isinstance(body, dict) and "error" in body else body


async def in_session(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    status, headers, body = await post(http, url, json.dumps(INIT).encode())
    assert status == 200, body
    return {"Mcp-Session-Id": headers["Mcp-Session-Id"]}


def accepted_codings(headers: dict[str, str]) -> set[str]:
    return {c.strip() for c in headers.get("Accept-Encoding", "").split(",") if c.strip()}


# Coding → a body in it the gateway cannot read. br and zstd are refused by aiohttp's parser before any handler
# runs (without their modules); the others aiohttp passes on undecoded, and the gateway finds them unreadable.
UNDECODED = {
    "br": b"\x1b\x10\x00\xf8\xa5\x12\x42\x00",
    "zstd": b"\x28\xb5\x2f\xfd\x00\x58\x01\x00\x00",
    "compress": b"\x1f\x9d\x90{\x00\x04\x08",
    "x-gzip": gzip.compress(json.dumps(CALL).encode()),
    "gzip, br": gzip.compress(b"\x1b\x10\x00\xf8"),
    "x-made-up": b"\x00\x01\x02\xff",
}


@pytest.mark.parametrize("coding", [c for c in UNDECODED if c not in DECODED])
async def test_a_body_in_a_coding_the_gateway_does_not_decode_is_415_naming_what_it_accepts(
        gw, http, caplog, coding):
    """br and zstd got aiohttp's text/plain 400 (`Please install Brotli`) and an ERROR traceback; a coding aiohttp
    does not know was read as it came, a parse_error (400) that said nothing about the coding."""
    headers = await in_session(http, gw.mcp)
    with caplog.at_level(logging.INFO):
        status, answer_headers, body = await post(http, gw.mcp, UNDECODED[coding],
                                                  {**headers, "Content-Encoding": coding})
    assert status == 415 and reason(body) == "unsupported_media_type", (status, body)
    assert body["id"] is None and body["error"]["code"] == -32015 and "Content-Encoding" in body["error"]["message"]
    assert answer_headers["Content-Type"].startswith("application/json")
    assert accepted_codings(answer_headers) == DECODED, answer_headers
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # The client can act on it: the same call, gzip-compressed as Accept-Encoding offers, is served.
    status, _, body = await post(http, gw.mcp, gzip.compress(json.dumps(CALL).encode()),
                                 {**headers, "Content-Encoding": "gzip"})
    assert status == 200 and body["id"] == 41 and "result" in body, body


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress),
                                                  ("GZip", gzip.compress), ("identity", lambda b: b)])
async def test_gzip_and_deflate_bodies_are_read_as_before(gw, http, coding, compress):
    headers = await in_session(http, gw.mcp)
    status, answer_headers, body = await post(http, gw.mcp, compress(json.dumps(CALL).encode()),
                                              {**headers, "Content-Encoding": coding})
    assert status == 200 and body["id"] == 41 and "result" in body, body
    assert "Accept-Encoding" not in answer_headers


async def test_a_plain_parse_error_names_no_coding(gw, http):
    headers = await in_session(http, gw.mcp)
    for extra in ({}, {"Content-Encoding": "gzip"}):
        raw = b"{oops" if not extra else gzip.compress(b"{oops")
        status, answer_headers, body = await post(http, gw.mcp, raw, {**headers, **extra})
        assert status == 400 and reason(body) == "parse_error", body
        assert "Accept-Encoding" not in answer_headers


# br and zstd (without their modules) are refused by aiohttp's parser, before any route or middleware runs.
PARSER_REFUSED = {c for c in ("br", "zstd") if c not in DECODED}
AGENT_ORIGIN = "http://agent.example:3000"


async def test_a_body_in_a_coding_the_gateway_does_not_decode_is_counted_as_an_edge_refusal(gw, http):
    """Refusals at the MCP edge are counted (`customs.requests.refused`); br and zstd, refused before any
    middleware, were not."""
    headers = await in_session(http, gw.mcp)
    codings = [c for c in UNDECODED if c not in DECODED]
    for coding in codings:
        status, _, body = await post(http, gw.mcp, UNDECODED[coding], {**headers, "Content-Encoding": coding})
        assert status == 415, (coding, body)
    async with http.get(f"{gw.url}/metrics") as resp:
        counts = refused(await resp.text())
    assert counts[("unsupported_media_type", "415")] == len(codings), counts


async def test_a_refused_coding_is_shared_with_an_allowed_origin(start_gateway, permissive_policies, http):
    """An allowed origin reads the 415 of every coding the gateway does not decode (CORS headers). br and zstd are
    refused by aiohttp's parser before any route, on a request of its own with none of the real one's headers:
    their 415 named no origin, so a browser agent could not read it. Another origin gets the guard's 403 for a
    coding aiohttp passes on, and the parser's 415 for br and zstd: neither names it."""
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"listen": {"allowed_origins": [AGENT_ORIGIN]},
                                  "upstreams": [{"name": "inventory", "url": url}],
                                  "policies": {"dir": str(permissive_policies)}})
        for coding in (c for c in UNDECODED if c not in DECODED):
            for origin in (AGENT_ORIGIN, "http://evil.example"):
                status, headers, body = await post(http, gw.mcp, UNDECODED[coding],
                                                   {"Content-Encoding": coding, "Origin": origin})
                if origin == AGENT_ORIGIN:
                    assert status == 415 and headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN, (
                        coding, headers)
                    assert "Origin" in headers["Vary"]
                else:
                    assert status == (415 if coding in PARSER_REFUSED else 403), (coding, body)
                    assert "Access-Control-Allow-Origin" not in headers, (coding, headers)


def brotli_stored(data: bytes) -> bytes:
    """`data` in the br coding (RFC 7932) without compressing it: window bits 16, one uncompressed meta-block
    (ISLAST 0, four nibbles of MLEN-1, ISUNCOMPRESSED 1, padded to a byte), then an empty last meta-block."""
    assert 0 < len(data) <= 1 << 16
    return (((len(data) - 1) << 4) | (1 << 20)).to_bytes(3, "little") + data + b"\x03"


def zstd_raw(data: bytes) -> bytes:
    """`data` in the zstd coding (RFC 8878) without compressing it: one single-segment frame (content size in two
    bytes, less 256), one last raw block."""
    assert 256 <= len(data) < 1 << 16
    return (b"\x28\xb5\x2f\xfd\x60" + (len(data) - 256).to_bytes(2, "little")
            + (1 | len(data) << 3).to_bytes(3, "little") + data)


ENCODE = {"br": brotli_stored, "zstd": zstd_raw}


async def test_a_real_br_or_zstd_call_from_an_allowed_origin_gets_a_readable_415_and_is_never_forwarded(
        start_gateway, permissive_policies, http):
    """A browser agent's call, really br- or zstd-encoded (a body the gateway would serve decoded), in a session:
    the 415 names the agent's origin on both agent paths, as every other answer there does, and the call never
    reaches the upstream. A refused origin, or the approvers' API (never shared), get the 415 without CORS."""
    if not PARSER_REFUSED:
        pytest.skip("aiohttp decodes br and zstd here: nothing for its parser to refuse")
    methods: list[str] = []

    def result_of(message: dict[str, Any]) -> Any:
        methods.append(message["method"])
        if message["method"] == "tools/list":
            return {"tools": [{"name": "get_stock", "inputSchema": {"type": "object"}}]}
        return {"content": [{"type": "text", "text": "A-1: 42 in stock"}]}

    async with scripted_upstream(result_of, name="inventory") as url:
        gw = await start_gateway({"listen": {"allowed_origins": [AGENT_ORIGIN]},
                                  "upstreams": [{"name": "inventory", "url": url}],
                                  "policies": {"dir": str(permissive_policies)}})
        session = {**await in_session(http, gw.mcp), "Origin": AGENT_ORIGIN}
        call = json.dumps({**CALL, "params": {**CALL["params"], "_meta": {"pad": "x" * 300}}}).encode()
        status, headers, body = await post(http, gw.mcp, call, session)
        assert status == 200 and headers["Access-Control-Allow-Origin"] == AGENT_ORIGIN, body
        assert methods.count("tools/call") == 1
        for coding in sorted(PARSER_REFUSED):
            for path in ("/mcp", "/mcp/inventory"):
                status, headers, body = await post(http, gw.url + path, ENCODE[coding](call),
                                                   {**session, "Content-Encoding": coding})
                assert status == 415 and reason(body) == "unsupported_media_type", (coding, path, body)
                assert headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN, (coding, path, headers)
                assert "Mcp-Session-Id" in headers["Access-Control-Expose-Headers"]
                assert "Origin" in headers["Vary"], headers
                assert accepted_codings(headers) == DECODED
            for url_, origin in ((gw.mcp, "http://evil.example"), (f"{gw.url}/api/approvals/x/approve", AGENT_ORIGIN)):
                status, headers, body = await post(http, url_, ENCODE[coding](call),
                                                   {**session, "Origin": origin, "Content-Encoding": coding})
                assert status == 415 and "Access-Control-Allow-Origin" not in headers, (coding, url_, headers)
        assert methods.count("tools/call") == 1, methods  # none of the refused calls reached the upstream


async def _refused_then_closed(url: str, head: str, body: bytes) -> bytes:
    """One raw request; everything the gateway sends until it closes the connection (after the answer, the
    gateway reads or drops the rest of the body: a log record of that comes before the close)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{head}\r\nHost: {host}:{port}\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closed the connection
    writer.close()
    return answer


@pytest.mark.parametrize(("head", "status"), [
    ("POST /mcp HTTP/1.1\r\nContent-Type: text/plain", 415),
    ("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: text/html", 406),
    ("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nOrigin: https://evil.example", 403),
    ("POST /healthz HTTP/1.1\r\nContent-Type: application/json", 405),
    ("POST /nowhere HTTP/1.1\r\nContent-Type: application/json", 404),
    ("GET /mcp HTTP/1.1\r\nAccept: text/event-stream", 400),
    ("DELETE /mcp HTTP/1.1\r\nMcp-Session-Id: nope", 404),
], ids=["415", "406", "403", "405", "404-route", "get", "delete"])
async def test_a_corrupt_compressed_body_refused_unread_logs_no_error(gw, caplog, head, status):
    """A refusal before the body is read (wrong type, origin, route, method, session) left a corrupt gzip body on
    the wire: aiohttp read it after the answer, failed to decode it and logged `Unhandled exception` at ERROR
    with a traceback, for any client to cause. The rest of such a body is now dropped and the connection closed,
    as for a body the gateway failed to read itself."""
    corrupt = b"\x1f\x8b\x08" + b"not gzip at all" * 8
    with caplog.at_level(logging.INFO):
        answer = await _refused_then_closed(gw.url, head, corrupt)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
