"""Requests aiohttp's HTTP parser refuses, against a real gateway process: what reaches the log.

aiohttp answers a request it cannot parse (a header field or request line too long, a header with no colon or a
control character, a bad version) with a 400 before any route, and logged it at ERROR with a traceback whose
message quotes the refused bytes: a cookie, an API-key header or a URL's `?access_token=` went into the log
as the client sent them (issue 5: no secret, token or key in the logs), and every malformed request a client
sent read as a gateway failure. The 400 stays; the log names the kind of refusal only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.conftest import Recorder

pytestmark = pytest.mark.asyncio

SECRET = "s3cr3t-marker-"  # every refused request below carries one; none may reach the log

REFUSED = {
    "cookie too long": b"POST /mcp HTTP/1.1\r\nHost: {host}\r\nCookie: customs_csrf=" + SECRET.encode() + b"cookie"
                       + b"c" * (20 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
    "request line too long": b"GET /mcp?access_token=" + SECRET.encode() + b"query" + b"q" * 9000
                             + b" HTTP/1.1\r\nHost: {host}\r\n\r\n",
    "control character": b"POST /mcp HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: " + SECRET.encode() + b"key\x01\r\n"
                         b"Content-Length: 0\r\n\r\n",
    "header without colon": b"POST /mcp HTTP/1.1\r\nHost: {host}\r\nX-Api-Key " + SECRET.encode() + b"nocolon\r\n"
                            b"Content-Length: 0\r\n\r\n",
    "bad version": b"POST /mcp?token=" + SECRET.encode() + b"version HTTP/9.x\r\nHost: {host}\r\n\r\n",
}
# Not HTTP at all (a TLS hello, a scanner): refused too, but routine noise on a port, so at DEBUG (as aiohttp has it)
NOT_HTTP = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SECRET.encode() + b"tls\r\n\r\n"


async def _send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw.replace(b"{host}", f"127.0.0.1:{port}".encode()))
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # the parser's answer closes the connection
    finally:
        writer.close()


async def test_a_request_the_parser_refuses_is_answered_400_and_logged_without_its_bytes(
        spawn_gateway: Any, upstream: tuple[Recorder, str], permissive_policies: Path) -> None:
    _recorder, url = upstream
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": {"mode": "anonymous"},
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    port = int(gw.url.rsplit(":", 1)[1])
    for kind, raw in REFUSED.items():
        answer = await _send(port, raw)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], (kind, answer[:200])
    answer = await _send(port, NOT_HTTP)
    assert b" 400 " in answer.split(b"\r\n", 1)[0], answer[:200]
    # aiohttp logs before it answers, so by now every refusal is in the log
    log = gw.log()
    assert SECRET not in log, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.count("refused a request the HTTP parser could not read") == len(REFUSED), log
