"""`customs approvals|tools` against what is not a Customs gateway, or with a token no header can carry: a message
a person can act on and a non-zero exit, never a Python traceback.

Each command runs as a child process (as a user runs it) against a real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.e2e.test_tool_pinning import make_env, tool
from tests.support.cli import customs_async
from tests.support.servers import run_aiohttp

COMMANDS = [("approvals", "list"), ("approvals", "show", "apr_x"), ("approvals", "approve", "apr_x"),
            ("approvals", "deny", "apr_x"), ("tools", "list"), ("tools", "approve", "inventory", "get_stock")]

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_service(reply: Reply) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 answering each connection with `reply`; yields its URL."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # the whole request, then the answer, as a server would
            length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            await reply(reader, writer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _not_http(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # --url at some other service's port


async def _cut_off(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"items\"")


@pytest.mark.parametrize("reply", [_not_http, _cut_off], ids=["not-http", "cut-off"])
@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
async def test_an_answer_that_is_not_http_or_is_cut_off_is_an_error_not_a_traceback(
        argv: tuple[str, ...], reply: Reply) -> None:
    async with tcp_service(reply) as url:
        code, _, err = await customs_async(*argv, "--url", url, token="t")
    assert "Traceback" not in err, err
    assert code == 3 and f"{url}" in err and "is --url a Customs gateway?" in err, err


INFINITE = {"id": "apr_x", "state": "pending", "upstream": "u", "tool": "t", "principal": "p", "created_at": 1.0,
            "expires_at": float("inf"), "args_digest": "d"}  # Python's json writes and reads `Infinity`


@pytest.mark.parametrize("answer", [{"x": 1}, [], {"items": [{"id": 1}]}, {"items": 5}],
                         ids=["object", "list", "items-without-fields", "items-not-a-list"])
@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
async def test_json_of_another_shape_is_an_error_not_a_traceback_nor_a_success(
        argv: tuple[str, ...], answer: object) -> None:
    """Another JSON service at --url (or a gateway of another version) answers 200 with JSON the command cannot
    read: it ended in a KeyError traceback, and `tools approve` printed the answer and exited 0 as if pinned."""
    async def handle(_: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with run_aiohttp(app) as url:
        code, out, err = await customs_async(*argv, "--url", url, token="t")
    assert "Traceback" not in err, err
    assert code == 3 and "is --url a Customs gateway?" in err, (code, out, err)


async def test_show_of_an_item_whose_expiry_is_infinite_is_an_error_not_a_traceback() -> None:
    """`Infinity` is JSON to Python's parser: an expiry of it was an OverflowError traceback in `show`."""
    async def handle(_: web.Request) -> web.Response:
        return web.json_response(INFINITE)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with run_aiohttp(app) as url:
        code, out, err = await customs_async("approvals", "show", "apr_x", "--url", url, token="t")
    assert "Traceback" not in err, err
    assert code == 3 and "is --url a Customs gateway?" in err, (code, out, err)


@pytest.mark.parametrize("token", ["eyJ.a.b\r", "eyJ.a\nb", "t\u00f6ken", "two words"],
                         ids=["trailing-cr", "newline", "non-ascii", "space"])
@pytest.mark.parametrize("argv", [("approvals", "list"), ("tools", "list")], ids=" ".join)
async def test_a_token_no_header_can_carry_is_a_usage_error(argv: tuple[str, ...], token: str) -> None:
    """A token read from a file written on Windows (`CUSTOMS_TOKEN=$(cat token.txt)` keeps its `\\r`) or pasted
    with a line break: http.client refused the header with a ValueError (UnicodeEncodeError for non-Latin-1)
    traceback. Nothing listens at --url: the token's check must answer before any request."""
    async with tcp_service(_not_http) as url:
        code, _, err = await customs_async(*argv, "--url", url, token=token)
    assert "Traceback" not in err, err
    assert code == 2 and "CUSTOMS_TOKEN" in err and "not a bearer token" in err, err
    assert token not in err  # a secret is not echoed


async def test_tools_approve_against_a_real_gateway_still_pins(start_gateway: Any, tmp_path: Path,
                                                              permissive_policies: Path) -> None:
    """The answer check must not refuse the gateway's own answer: a quarantined tool re-approved by the command."""
    async for env in make_env(start_gateway, tmp_path, permissive_policies, "tofu"):
        assert "infra__deploy" in await env.names()
        env.tools["deploy"] = tool("deploy", destructive=True)  # the rug pull: quarantined
        assert "infra__deploy" not in await env.names()
        admin = env.token("carol", groups=["admins"])
        _, out, _ = await customs_async("tools", "list", "--url", env.gw.url, token=admin, check=True)
        assert "infra/deploy\tquarantined" in out, out
        seen = (await env.record("deploy"))["seen"]
        _, out, _ = await customs_async("tools", "approve", "infra", "deploy", "--hash", seen.upper(),
                                        "--url", env.gw.url, token=admin, check=True)
        assert '"state": "pinned"' in out and '"tool": "deploy"' in out and seen in out, out
        assert "infra__deploy" in await env.names()


@pytest.mark.parametrize("digest", ["", "  ", "sha256:abc", "deadbeef"])
async def test_tools_approve_with_an_empty_or_malformed_hash_is_a_usage_error_that_pins_nothing(
        start_gateway: Any, tmp_path: Path, permissive_policies: Path, digest: str) -> None:
    """`--hash "$EXPECTED"` with the variable unset sent no hash, which approves the definition last seen: the
    changed one of a quarantined tool, the very definition the administrator meant to check against."""
    async for env in make_env(start_gateway, tmp_path, permissive_policies, "tofu"):
        assert "infra__deploy" in await env.names()
        env.tools["deploy"] = tool("deploy", destructive=True)  # the rug pull: quarantined
        assert "infra__deploy" not in await env.names()
        admin = env.token("carol", groups=["admins"])
        code, _, err = await customs_async("tools", "approve", "infra", "deploy", "--hash", digest,
                                           "--url", env.gw.url, token=admin)
        assert code == 2 and "--hash" in err and "sha256:" in err, err
        assert (await env.record("deploy"))["state"] == "quarantined"
        assert "infra__deploy" not in await env.names()


@pytest.mark.parametrize("argv", [("approvals", "approve", "apr_x"), ("tools", "list")], ids=" ".join)
async def test_an_empty_token_option_is_a_usage_error_not_the_environments_token(argv: tuple[str, ...]) -> None:
    """`--token "$APPROVER_TOKEN"` with the variable unset fell back to CUSTOMS_TOKEN: the call was made (a held call
    approved) as whoever that token names. Nothing listens at --url: only the check may answer."""
    async with tcp_service(_not_http) as url:
        code, _, err = await customs_async(*argv, "--token", "", "--url", url, token="someone-elses.token")
    assert "Traceback" not in err, err
    assert code == 2 and "--token" in err and "empty" in err, err
