"""What upstreams send a session is scrubbed of every credential the gateway sent upstream for it that may still be
valid, however many calls ago, and of the gateway's own session-level credential (Session.carried,
gateway/server_messages.py). An upstream quoting a token it was given earlier (a log line, a progress message) would
hand the agent a token for that upstream, usable against it directly, past policy and approval.
Real gateway (minted credentials), real SDK upstream and client.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import mcp_types as types
import pytest
from aiohttp import web
from mcp.server.mcpserver import Context, MCPServer

from gateway.errors import GatewayError
from gateway.session import CarriedCredentials
from gateway.transport.common import check_initialize
from tests.credentials.test_cred_minted_echo import minted
from tests.credentials.test_cred_refused_initialize import ACCEPT, INIT, refuse
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_aiohttp, run_http_server, run_post_only_mcp

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


def remembering_server(quoted: list[str]) -> MCPServer[Any]:
    """`remember` notes the Authorization header it came with; `recall` quotes the first one noted (whole, then its
    bare token) in a log line during its call; `again` does nothing."""
    server: MCPServer[Any] = MCPServer("remembering")

    @server.tool()
    async def remember(ctx: Context) -> str:
        """Note this call's Authorization header."""
        quoted.append((ctx.headers or {}).get("authorization", ""))
        return "noted"

    @server.tool()
    async def again() -> str:
        """Nothing."""
        return "again"

    @server.tool()
    async def recall(ctx: Context) -> str:
        """Quote the first header noted in a log line, then answer without it."""
        with warnings.catch_warnings():  # logging is deprecated in 2026-07-28
            warnings.simplefilter("ignore")
            await ctx.info(f"recall {quoted[0]} and {quoted[0].partition(' ')[2]}")
        return "quiet"

    return server


@pytest.mark.asyncio
async def test_an_older_token_still_valid_is_taken_out_after_many_calls_reusing_another(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """100 calls reuse one cached token after a call that carried another, still valid: on the old code the session
    kept its last 128 values, duplicates of the reused token, and the older one was passed on in the clear."""
    quoted: list[str] = []
    seen: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(str(params.data))

    async with run_http_server(remembering_server(quoted)) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            await client.call_tool("echoing__remember", {})
            for _ in range(100):
                await client.call_tool("echoing__again", {})
            result = await client.call_tool("echoing__recall", {})
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert quoted[0].startswith("Bearer eyJ"), quoted
    assert seen == ["recall [REDACTED] and [REDACTED]"], seen


def session_level_token(requests: list[SeenRequest]) -> str:
    """The Authorization header of the gateway's own session requests (set-up, GET stream): the minted token with an
    empty scope (a call's names its tool)."""
    headers = {r.headers["authorization"] for r in requests if "authorization" in r.headers}
    own = [h for h in headers
           if jwt.decode(h.partition(" ")[2], options={"verify_signature": False})["scope"] == ""]
    assert len(own) == 1, own
    return own[0]


@pytest.mark.asyncio
async def test_the_session_level_token_is_taken_out_of_what_upstreams_send(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """The token the gateway opened the upstream session with (initialize, the GET stream, the DELETE) is no call's:
    on the old code an upstream quoting it reached the agent as it was."""
    quoted: list[str] = []
    seen: list[str] = []
    requests: list[SeenRequest] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(str(params.data))

    async with run_http_server(remembering_server(quoted), requests=requests) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            await client.call_tool("echoing__again", {})  # opens the upstream session
            quoted.append(session_level_token(requests))
            result = await client.call_tool("echoing__recall", {})
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert seen == ["recall [REDACTED] and [REDACTED]"], seen


async def quoting_initialize(request: web.Request) -> web.Response:
    """A hand-written upstream whose `initialize` answer quotes the Authorization header it was opened with (a
    debugging server), in its instructions and its serverInfo; anything else is answered empty."""
    message = json.loads(await request.read())
    if "id" not in message:
        return web.Response(status=202)
    header = request.headers.get("Authorization", "")
    result: dict[str, Any] = {"tools": []}
    if message["method"] == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "quoting", "version": "1", "title": f"opened with {header}"},
                  "instructions": f"my token is {header.partition(' ')[2]}"}
    return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_session_level_token_is_taken_out_of_the_upstreams_own_initialize_answer(
        mode: str, start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """/mcp/{upstream} passes the upstream's `initialize` answer through (`server/discover` for a stateless client,
    mode auto): on the old code only the secrets the gateway holds were taken out of it, not the token it opened the
    upstream session with."""
    async with run_post_only_mcp(quoting_initialize) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(f"{gw.mcp}/echoing", mode=mode) as client:
            instructions, info = client.instructions, client.server_info
    assert instructions == "my token is [REDACTED]", instructions
    assert info is not None and info.title == "opened with [REDACTED]", info


@pytest.mark.asyncio
async def test_a_refused_initialize_does_not_quote_the_session_level_token(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """An upstream refusing the gateway's `initialize` quoting the token it was sent ("invalid API key Bearer …"): the
    agent's upstream_error names the refusal with the token taken out (on the old code only the secrets the gateway
    holds were, not a minted token)."""
    app = web.Application()
    app.router.add_post("/mcp", refuse)
    async with run_aiohttp(app) as base:
        gw = await start_gateway(minted(f"{base}/mcp", permissive_policies, tmp_path))
        async with aiohttp.ClientSession() as http, http.post(f"{gw.mcp}/echoing", json=INIT, headers=ACCEPT) as sent:
            answer = await sent.json()
    error = answer["error"]
    assert "eyJ" not in json.dumps(answer), answer
    # The message is cut at 200 characters, at a word's end: the token (no whole value, once cut) is left out whole.
    assert error["message"] == "upstream rejected initialize: invalid API key Bearer…", error
    assert error["data"]["upstream_error"]["message"] == "invalid API key [REDACTED]", error
    assert error["data"]["upstream_error"]["data"]["authorization"] == "[REDACTED]", error


def test_a_refusal_too_long_to_quote_is_cut_at_a_word_end() -> None:
    """A word that does not fit in the 200 characters is dropped whole, never cut in the middle (on the old code the
    message was cut at 200 characters wherever they ended: a quoted token in part, which no exact value matches)."""
    token = "t" * 300
    for message, quoted in ((f"bad {token}", "upstream rejected initialize: bad…"),
                            ("x " * 120, "upstream rejected initialize: " + "x " * 84 + "x…"),
                            ("short", "upstream rejected initialize: short")):
        with pytest.raises(GatewayError) as refused:
            check_initialize({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": message}})
        assert refused.value.message == quoted and len(quoted) <= 200, refused.value.message


def test_carried_keeps_distinct_values_newest_last() -> None:
    """A value carried again moves to the end; past the bound the least recently carried goes."""
    carried = CarriedCredentials(limit=3)
    assert not carried
    carried.extend(["a-token", "b-token", "a-token", ""])
    assert tuple(carried) == ("b-token", "a-token") and carried
    carried.extend(["c-token", "d-token"])
    assert tuple(carried) == ("a-token", "c-token", "d-token")
    carried.extend(["a-token"] * 200)
    assert tuple(carried) == ("c-token", "d-token", "a-token") and len(carried) == 3


@pytest.mark.asyncio
async def test_a_calls_answer_quoting_the_session_level_token_is_scrubbed(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """A call's answer quoting a credential the call did not carry (the token the upstream session was opened with):
    on the old code `forward.py` took out the call's own token only, and the session's reached the agent."""
    quoted: list[str] = []
    requests: list[SeenRequest] = []
    async with run_http_server(quoting_server(quoted), requests=requests) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with sdk_client(gw.mcp) as client:
            await client.call_tool("echoing__nothing", {})  # opens the upstream session
            quoted.append(session_level_token(requests))
            result = await client.call_tool("echoing__quote", {})
    text = result.content[0].text  # type: ignore[union-attr]
    assert quoted[0].startswith("Bearer eyJ") and "eyJ" not in text, text
    assert text == "opened with [REDACTED], token [REDACTED]", text


def quoting_server(quoted: list[str]) -> MCPServer[Any]:
    """`quote` answers with the first value in `quoted` (whole, then its bare token); `nothing` does nothing."""
    server: MCPServer[Any] = MCPServer("quoting")

    @server.tool()
    async def quote() -> str:
        """Quote the noted header."""
        return f"opened with {quoted[0]}, token {quoted[0].partition(' ')[2]}"

    @server.tool()
    async def nothing() -> str:
        """Nothing."""
        return "nothing"

    return server


async def listing_quotes_its_header(request: web.Request) -> web.Response:
    """A hand-written upstream whose tools/list answer quotes the Authorization header it came with in a tool's
    description (a debugging server), and whose completion answer quotes it too."""
    message = json.loads(await request.read())
    if "id" not in message:
        return web.Response(status=202)
    header = request.headers.get("Authorization", "")
    result: dict[str, Any] = {}
    if message["method"] == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "completions": {}, "prompts": {}},
                  "serverInfo": {"name": "listing", "version": "1"}}
    elif message["method"] == "tools/list":
        result = {"tools": [{"name": "look", "description": f"called with {header}",
                             "inputSchema": {"type": "object"}}]}
    elif message["method"] == "completion/complete":
        result = {"completion": {"values": [header.partition(" ")[2]], "hasMore": False}}
    return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})


@pytest.mark.asyncio
async def test_lists_and_completions_quoting_the_session_level_token_are_scrubbed(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """tools/list and completion/complete go upstream without the pipeline (router.py `fetch`), with the session's own
    token: on the old code only the secrets the gateway holds were taken out of their answers, and a tool description
    quoting the token reached the agent (and the pinned definition)."""
    headers = {**ACCEPT, "MCP-Protocol-Version": "2025-11-25"}
    async with run_post_only_mcp(listing_quotes_its_header) as url:
        gw = await start_gateway(minted(url, permissive_policies, tmp_path))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.mcp}/echoing", json=INIT, headers=headers) as opened:
                session = opened.headers["Mcp-Session-Id"]
            answers = []
            for body in ({"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                         {"jsonrpc": "2.0", "id": 3, "method": "completion/complete",
                          "params": {"ref": {"type": "ref/prompt", "name": "p"},
                                     "argument": {"name": "a", "value": ""}}}):
                async with http.post(f"{gw.mcp}/echoing", json=body,
                                     headers={**headers, "Mcp-Session-Id": session}) as sent:
                    answers.append(await sent.json())
    listed, completed = answers
    assert "eyJ" not in json.dumps(answers), answers
    assert listed["result"]["tools"][0]["description"] == "called with [REDACTED]", listed
    assert completed["result"]["completion"]["values"] == ["[REDACTED]"], completed


@pytest.mark.asyncio
async def test_the_bare_token_after_a_value_prefix_of_any_scheme_is_taken_out(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """`credentials.value_prefix` may be any text: one whose scheme is not all letters (`JWT-1 `) left the token
    after it out of what is scrubbed (only a scheme of letters, `Bearer `, was split off), so an upstream quoting
    the bare token it parsed from its header handed it to the agent."""
    quoted: list[str] = []
    seen: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(str(params.data))

    config = minted("", permissive_policies, tmp_path)
    async with run_http_server(remembering_server(quoted)) as url:
        config["upstreams"][0].update(url=url, credentials={"mode": "minted", "value_prefix": "JWT-1 "})
        gw = await start_gateway(config)
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            await client.call_tool("echoing__remember", {})
            result = await client.call_tool("echoing__recall", {})
    assert result.content[0].text == "quiet", result  # type: ignore[union-attr]
    assert quoted[0].startswith("JWT-1 eyJ"), quoted
    assert seen == ["recall [REDACTED] and [REDACTED]"], seen


@pytest.mark.asyncio
async def test_the_bare_token_after_a_value_prefix_with_no_space_is_taken_out(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    """A `value_prefix` with no space at its end (`token=`): only the header's whole value was taken out, and an
    upstream quoting the bare token it parsed from it handed it to the agent."""
    quoted: list[str] = []
    server: MCPServer[Any] = MCPServer("prefixed")

    @server.tool()
    async def bare(ctx: Context) -> str:
        """Quote the token after `token=` in this call's Authorization header."""
        header = (ctx.headers or {}).get("authorization", "")
        quoted.append(header)
        return f"my token is {header.removeprefix('token=')}"

    config = minted("", permissive_policies, tmp_path)
    async with run_http_server(server) as url:
        config["upstreams"][0].update(url=url, credentials={"mode": "minted", "value_prefix": "token="})
        gw = await start_gateway(config)
        async with sdk_client(gw.mcp) as client:
            result = await client.call_tool("echoing__bare", {})
    assert quoted[0].startswith("token=eyJ"), quoted
    assert result.content[0].text == "my token is [REDACTED]", result  # type: ignore[union-attr]
