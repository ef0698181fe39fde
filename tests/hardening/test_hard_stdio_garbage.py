"""A stdio upstream child that misbehaves at the byte level, on every path the gateway talks to it.

Each case: one path (the request the child answers with garbage: its initialize at set-up, tools/list, tools/call,
resources/read, prompts/get, an agent's notification passed on, the agent's answer to the child's roots/list) and
one kind of garbage (stdio_garbage_child.py's GARBAGE: a line that is no JSON, invalid UTF-8, a JSON value that is
no object, a wrong or missing jsonrpc version, answers to ids nobody asked for, both result and error, an error
object that is no object, without a code or with one that is no integer, Infinity, a line of several MiB (under
the 16 MiB cap), an answer with no newline then EOF, a partial line then a stall, a BOM, \\r\\n endings, stdout
closed while the child lives on, an exit mid-call with several codes and signals, megabytes of stderr, a method
that is no string). What the transport tests already cover directly (batches, NaN, oversized lines, a mute child,
a full stdin) is not repeated. The agent must get its path's normal answer or a JSON-RPC error with a stable
upstream reason (never a text/plain 500, internal_error, or a hang past timeout_s); the gateway must go on
serving (the child restarted where it died); nothing may be left open once the session ends; the log holds no
traceback and no ERROR but the documented ones (a child whose initialize failed). A real gateway, real HTTP, a
real child process. Each path runs its kinds at once on one gateway, one child per kind (they share nothing); a kind
is tried on the paths whose code differs for it (PATHS), to keep the table fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ANON, RawAgent, answered_roots_in_call, decode_answer, poll

CHILD = str(Path(__file__).with_name("stdio_garbage_child.py"))
# timeout_s of a kind's child: long (no normal answer may meet it, however loaded the machine), short where the test
# waits for it (an answer that never comes; a stuck child, stopped by the fence after 3 x timeout_s).
TIMEOUT_S = 15.0
SHORT_TIMEOUT_S = 1.0
INIT_PARAMS: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
                               "clientInfo": {"name": "stdio-garbage-test", "version": "1"}}

# What the agent gets for each kind: its normal answer (the garbage is skipped), or an error with one of these reasons.
OK = frozenset({"ok"})
ERROR = frozenset({"upstream_error"})
GONE = frozenset({"upstream_unavailable"})
LATE = frozenset({"upstream_timeout"})
EXPECTED: dict[str, frozenset[str]] = {
    "not_json": OK, "invalid_utf8_line": OK, "invalid_utf8_answer": LATE, "array": OK, "number": OK, "string": OK,
    "null": OK, "wrong_version": ERROR, "no_version": ERROR, "unknown_id": OK, "result_and_error": ERROR,
    "error_not_object": ERROR, "error_no_code": ERROR, "error_code_string": ERROR, "error_code_float": ERROR,
    "error_no_message": ERROR, "infinity": ERROR, "several_mib": OK, "no_newline_eof": OK, "partial_stall": LATE,
    "bom": OK, "crlf": OK, "stdout_closed": GONE, "exit_0": GONE, "exit_1": GONE, "exit_2": GONE, "exit_255": GONE,
    "sigkill": GONE, "sigsegv": GONE, "stderr_flood_lines": OK, "stderr_flood_one_line": OK, "method_list": OK,
    "method_object": OK, "method_number": OK, "method_null": OK, "request_method_list": OK,
    "request_method_number": OK, "request_id_object": OK,
}
# The child dies, or (partial_stall) is stopped as stuck by the fence (3 x timeout_s), and is started again.
RESTARTED = frozenset({k for k, v in EXPECTED.items() if v == GONE} | {"partial_stall", "no_newline_eof"})
SLOW = frozenset(k for k, v in EXPECTED.items() if v == LATE)  # the agent waits for timeout_s: given a short one
# What f0dee43 changed (a method that is no string; an error object with no integer code or no string message).
CHANGED = frozenset(k for k in EXPECTED if "method" in k or k.startswith("error_"))
# ERROR lines the gateway writes on purpose for a child it cannot use (no traceback): its initialize failed.
DOCUMENTED_ERRORS = ("initialize failed", "initialize timed out")


class Agent(RawAgent):
    """A raw streamable HTTP agent on the gateway's view of the one stdio upstream. Bounded: no answer may take
    longer than timeout_s (a child that dies is restarted within a second or so)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        super().__init__(http, url, within=TIMEOUT_S + 15)

    def decode(self, text: str) -> Any:
        return _decode(text)

    async def initialize(self) -> tuple[int, str, Any]:
        answer = await self.request("initialize", INIT_PARAMS, rid=0)
        if self.session_id:
            await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer


def _decode(text: str) -> Any:
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    for event in map(json.loads, data):  # nothing the agent is sent names a method that is no string
        assert not isinstance(event, dict) or isinstance(event.get("method", ""), str), event
    return decode_answer(text)


def outcome(answer: tuple[int, str, Any]) -> str:
    """'ok' for a result, the error's reason otherwise; a text/plain answer or a body that is no JSON-RPC fails."""
    _, content_type, body = answer
    assert "text/plain" not in content_type and isinstance(body, dict), answer
    if "result" in body:
        return "ok"
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), int), answer
    return str((error.get("data") or {}).get("reason"))


# -- what the agent does on each path; returns what it got on the path's garbage-answered request ----------------


async def on_set_up(agent: Agent) -> str:
    # The child's initialize came at the gateway's start; the agent meets a child restarted by now, or not yet.
    got = outcome(await agent.initialize())
    assert got in {"ok", "upstream_unavailable"}, got
    return "ok"


async def on_list(agent: Agent) -> str:
    assert outcome(await agent.initialize()) == "ok"
    return outcome(await agent.request("tools/list"))


async def on_call(agent: Agent) -> str:
    assert outcome(await agent.initialize()) == "ok"
    return outcome(await agent.request("tools/call", {"name": "garbage", "arguments": {}}))


async def on_resource(agent: Agent) -> str:
    assert outcome(await agent.initialize()) == "ok"
    return outcome(await agent.request("resources/read", {"uri": "file:///garbage"}))


async def on_prompt(agent: Agent) -> str:
    assert outcome(await agent.initialize()) == "ok"
    return outcome(await agent.request("prompts/get", {"name": "garbage"}))


async def on_notification(agent: Agent) -> str:
    assert outcome(await agent.initialize()) == "ok"
    status, _, body = await agent.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert status == 202, (status, body)  # taken, as any notification
    return "ok"


async def on_answer(agent: Agent) -> str:
    """The child asks roots/list during a call; the agent's answer is followed by the garbage."""
    assert outcome(await agent.initialize()) == "ok"
    return outcome((200, "", _decode(await answered_roots_in_call(agent, TIMEOUT_S + 15))))


@dataclass(frozen=True)
class Path_:
    name: str
    key: str  # what the child answers with garbage (stdio_garbage_child.py's key_of)
    flow: Callable[[Agent], Awaitable[str]]
    kinds: frozenset[str]  # the kinds tried on this path
    checked: bool = True  # the path's answer is the garbage's (else only a clean answer and serving on is checked)


ALL = frozenset(EXPECTED)
EXITS = frozenset({"exit_0", "exit_2", "exit_255", "sigsegv"})  # as exit_1 and sigkill, but for the code logged
COSTLY = SLOW | {"stdout_closed"}  # seconds each (a timeout; a child stopped after its grace): where they differ
# Every kind is tried where a request of the agent's is answered (tools/call) and at the child's set-up (initialize,
# answered before any session: a stall there is given STARTUP_S, 60 s, by design, test_stdio_slow_start.py). The
# gateway's own listing (tools/list), a notification (no request waiting) and the agent's answer (a call in flight
# after it) try them but for the exit codes tools/call has, and the slow ones where they meet what tools/call's do (a
# call waiting; a notification's stall is met by the next call). The agent's resources/read and prompts/get are
# answered by the same code as tools/call: they get what f0dee43 changed.
PATHS = [
    Path_("initialize", "initialize", on_set_up, ALL - {"partial_stall"}, checked=False),
    Path_("tools-list", "tools/list", on_list, ALL - EXITS - COSTLY, checked=False),  # the gateway's listing first
    Path_("tools-call", "tools/call", on_call, ALL),
    Path_("resources-read", "resources/read", on_resource, CHANGED),
    Path_("prompts-get", "prompts/get", on_prompt, CHANGED),
    Path_("notification", "notification", on_notification, ALL - EXITS, checked=False),
    Path_("answer", "answer", on_answer, ALL - EXITS - COSTLY),
]
async def ready(http: aiohttp.ClientSession, gw: Any, name: str) -> bool:
    async with http.get(f"{gw.url}/readyz") as resp:
        return bool((await resp.json())["upstreams"][name]["ready"])


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
async def test_stdio_garbage_is_a_clean_answer(start_gateway: Any, permissive_policies: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture, path: Path_) -> None:
    """One gateway per path, one child per kind of garbage (g0, g1, ...: they share nothing), run at once."""
    caplog.set_level(logging.INFO)
    kinds = sorted(path.kinds)
    gw = await start_gateway({
        "upstreams": [{"name": f"g{i}", "command": [sys.executable, CHILD, kind, path.key, str(tmp_path / f"g{i}")],
                       "timeout_s": SHORT_TIMEOUT_S if kind in SLOW else TIMEOUT_S} for i, kind in enumerate(kinds)],
        "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(_garbage_row(gw, http, path, kind, f"g{i}", tmp_path / f"g{i}", caplog)
                                         for i, kind in enumerate(kinds)), return_exceptions=True)
        failed = {kind: repr(result) for kind, result in zip(kinds, results, strict=True) if result is not None}
    # No traceback, and no ERROR but the documented ones, each named by the kind whose child logged it.
    names = {f"customs.upstream.g{i}": kind for i, kind in enumerate(kinds)}
    for r in caplog.records:
        if r.exc_info or r.levelno >= logging.CRITICAL or (r.levelno >= logging.ERROR and not (
                r.name in names and any(d in r.getMessage() for d in DOCUMENTED_ERRORS))):
            failed.setdefault(names.get(r.name, r.name), f"logged {r.levelname}: {r.getMessage()[:200]}")
    assert not failed, failed


async def _garbage_row(gw: Any, http: aiohttp.ClientSession, path: Path_, kind: str, name: str, mark: Path,
                       caplog: pytest.LogCaptureFixture) -> None:
    if path.key != "initialize":
        await poll(lambda: ready(http, gw, name), timeout=60, what="the stdio child to be ready")
    agent = Agent(http, f"{gw.mcp}/{name}")
    got = await path.flow(agent)
    assert got in (EXPECTED[kind] if path.checked else EXPECTED[kind] | OK), got
    while kind in SLOW and path.checked and not mark.exists():  # a loaded machine met the short timeout_s before
        assert (await agent.end()) in (200, 202, 204)             # the child was asked: it is asked again
        agent = Agent(http, f"{gw.mcp}/{name}")
        got = await path.flow(agent)
        assert got in EXPECTED[kind], got
    if path.key not in ("tools/list", "initialize"):  # the garbage was served (a notification's after its 202)
        await poll(mark.exists, timeout=30, what="the garbage to be served")
    upstream = gw.gateway.parts.upstreams[name]
    if kind.startswith("request_method_"):  # the child's request is answered, not left waiting
        await poll(lambda: any('"code": -32600' in r.getMessage() and r.name.endswith(f".{name}")
                               for r in caplog.records), timeout=30, what="the child to be told its request is invalid")
    if kind == "partial_stall" and path.key == "notification":  # no call met the stall yet: the next one does
        got = outcome(await agent.request("tools/call", {"name": "echo", "arguments": {}}, rid=9))
        assert got == "upstream_timeout", got  # at timeout_s; the fence then finds the child stuck
    if kind in RESTARTED:  # the child died (or, stuck, is stopped after 3 x timeout_s): it is started again
        await poll(lambda: upstream.health().restarts >= 1, timeout=60, what="the child to be restarted")
    if agent.session_id:
        assert (await agent.end()) in (200, 202, 204)
    # The child behaves again (restarted where it died): the gateway serves a new session there.
    await poll(lambda: ready(http, gw, name), timeout=60, what="the stdio child to be ready again")
    if kind in SLOW:  # its short timeout_s may be met by a loaded machine: tried until served, never failed for it
        await poll(lambda: served(http, gw, name, patient=True), timeout=60, what="the child to be served again")
    else:
        assert await served(http, gw, name, patient=False)
    assert not upstream._routes.views, upstream._routes.views  # no session of the agents' is left open


async def served(http: aiohttp.ClientSession, gw: Any, name: str, *, patient: bool) -> bool:
    """A new session is served there: initialize, a call, a read; `patient` takes a timeout as 'not yet'."""
    again = Agent(http, f"{gw.mcp}/{name}")
    try:
        got = [outcome(await again.initialize())]
        if got == ["ok"]:
            got.append(outcome(await again.request("tools/call", {"name": "echo", "arguments": {}}, rid=2)))
            got.append(outcome(await again.request("resources/read", {"uri": "file:///r"}, rid=3)))
    finally:
        if again.session_id:
            await again.end()
    if patient and set(got) <= {"ok", "upstream_timeout"}:
        return set(got) == {"ok"}
    assert set(got) == {"ok"}, got
    return True
