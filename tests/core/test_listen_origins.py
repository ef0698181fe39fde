"""listen.public_url, allowed_origins and allowed_hosts as a browser and an IPv6 listener meet them.

A browser sends `Origin: https://host` without the scheme's default port, whatever public_url wrote; a
page the gateway served on an allowed Host (localhost beside 127.0.0.1) sends its own origin; and a gateway
listening on an IPv6 literal names itself `http://[::1]:PORT`, the only form a URL can take.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.servers import run_http_server

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with run_http_server(inventory_server()) as url:
        yield url


async def initialize(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.post(url, data=json.dumps(INIT), headers={**HEADERS, **headers}) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.asyncio
async def test_an_origin_without_the_default_port_is_public_urls_own(start_gateway, permissive_policies, upstream):
    gw = await start_gateway({"upstreams": [{"name": "inventory", "url": upstream}],
                              "policies": {"dir": str(permissive_policies)},
                              "listen": {"public_url": "https://customs.example:443",
                                         "allowed_origins": ["http://ok.example:80/"]}})
    own = {"Host": "customs.example"}
    assert (await initialize(gw.mcp, {**own, "Origin": "https://customs.example"}))[0] == 200
    assert (await initialize(gw.mcp, {**own, "Origin": "https://customs.example:443"}))[0] == 200
    assert (await initialize(gw.mcp, {**own, "Origin": "http://ok.example"}))[0] == 200
    for other in ("https://customs.example:8443", "https://ok.example", "https://evil.example"):
        status, body = await initialize(gw.mcp, {**own, "Origin": other})
        assert status == 403 and body["error"]["data"]["reason"] == "origin_forbidden", other


@pytest.mark.asyncio
async def test_a_page_on_an_allowed_local_host_is_same_origin(start_gateway, permissive_policies, upstream):
    # public_url names 127.0.0.1; localhost is an allowed Host too, so a page opened there posts its own origin.
    gw = await start_gateway({"upstreams": [{"name": "inventory", "url": upstream}],
                              "policies": {"dir": str(permissive_policies)}})
    port = port_of(gw.url)
    status, _ = await initialize(gw.mcp, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})
    assert status == 200
    # Another local page (another port, or a page of one allowed host posting to another) is not.
    for host, origin in ((f"localhost:{port}", f"http://localhost:{port + 1}"),
                         (f"localhost:{port}", "http://127.0.0.1:1"),
                         (f"127.0.0.1:{port}", f"http://localhost:{port}")):
        status, body = await initialize(gw.mcp, {"Host": host, "Origin": origin})
        assert status == 403 and body["error"]["data"]["reason"] == "origin_forbidden", (host, origin)


@pytest.mark.asyncio
async def test_any_host_does_not_make_any_origin_same_origin(start_gateway, permissive_policies, upstream):
    # allowed_hosts "*" turns the Host check off; the Origin check is then the only rebinding guard left.
    gw = await start_gateway({"upstreams": [{"name": "inventory", "url": upstream}],
                              "policies": {"dir": str(permissive_policies)}, "listen": {"allowed_hosts": ["*"]}})
    status, body = await initialize(gw.mcp, {"Host": "evil.example", "Origin": "http://evil.example"})
    assert status == 403 and body["error"]["data"]["reason"] == "origin_forbidden"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def ipv6_gateway(tmp_path: Path) -> Iterator[str]:
    """`customs serve --host ::1 --port 0` (embedded defaults) as a process; yields the URL its banner names."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", "::1", "--port", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the banner ends start-up; the process's own exit ends the loop
            if "agents connect to" in line:
                match = re.search(r"agents connect to (\S+)/mcp", line)
                assert match, line
                yield match.group(1)
                break
        else:
            pytest.fail(f"gateway exited with {proc.wait()}")
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.asyncio
async def test_an_ipv6_listener_names_itself_with_brackets(ipv6_gateway):
    assert re.fullmatch(r"http://\[::1\]:\d+", ipv6_gateway), ipv6_gateway
    async with aiohttp.ClientSession() as http, \
            http.get(f"{ipv6_gateway}/.well-known/oauth-protected-resource/mcp") as resp:
        assert (await resp.json())["resource"] == f"{ipv6_gateway}/mcp"
    # A browser page served from that address posts with that origin: the gateway's own.
    status, _ = await initialize(f"{ipv6_gateway}/mcp", {"Origin": ipv6_gateway})
    assert status == 200


@pytest.mark.asyncio
async def test_the_banner_names_public_url_for_agents(spawn_gateway, permissive_policies, upstream):
    # Behind a proxy or in a container (listen.host 0.0.0.0) the bind address is no URL an agent can use: its
    # Host would be refused. The banner's agent URL is public_url's.
    from tests.conftest import _wait_for_line, free_port
    port = free_port()
    gw = await spawn_gateway({"upstreams": [{"name": "inventory", "url": upstream}],
                              "policies": {"dir": str(permissive_policies)},
                              "listen": {"public_url": f"http://localhost:{port}/"}}, port=port)
    await _wait_for_line(gw.log_path, "agents connect to", gw.proc, 10)  # the banner follows the log line
    assert f"listening on http://127.0.0.1:{port}  (agents connect to http://localhost:{port}/mcp)" in gw.log()
