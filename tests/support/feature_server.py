"""A real SDK MCP server exercising what a gateway must relay: progress, logging, sampling,
elicitation, list_changed, a tool that hangs until cancelled, and (over stdio) one that crashes.
`overlap` lets several clients' calls meet inside one (shared stdio) server before they report.

In-process use: `server, state = feature_server()` and run it with tests.support.servers.
As a stdio child: `[sys.executable, FEATURE_SERVER_PATH]`; with FEATURE_CANCEL_FILE set, the
hang tool appends "cancelled" to that file when the server cancels it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel

FEATURE_SERVER_PATH = str(Path(__file__).resolve())


@dataclass
class FeatureState:
    hang_started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    arrived: dict[str, int] = field(default_factory=dict)  # overlap: calls that reached each group
    meeting: asyncio.Condition = field(default_factory=asyncio.Condition)


class Name(BaseModel):
    name: str


async def _log(ctx: Context, text: str) -> None:
    with warnings.catch_warnings():  # logging is deprecated in the 2026-07-28 revision; still used in 2025-11-25
        warnings.simplefilter("ignore")
        await ctx.info(text)


def feature_server() -> tuple[MCPServer[Any], FeatureState]:
    server: MCPServer[Any] = MCPServer("features")
    state = FeatureState()

    @server.tool()
    async def echo(value: str) -> str:
        """Return the value (used to prove responses reach the right caller)."""
        await asyncio.sleep(0)
        state.calls.append(f"echo:{value}")
        return value

    @server.tool()
    async def progress(steps: int, ctx: Context) -> str:
        """Report `steps` progress notifications and log lines, then finish."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await _log(ctx, f"log {step}")
        return "done"

    @server.tool()
    async def sample(prompt: str, ctx: Context) -> str:
        """Ask the client's model (sampling/createMessage) and return its text."""
        with warnings.catch_warnings():  # sampling is deprecated in 2026-07-28; still part of 2025-11-25
            warnings.simplefilter("ignore")
            result = await ctx.session.create_message(
                [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=10,
                related_request_id=ctx.request_id)
        content = result.content
        return content.text if isinstance(content, TextContent) else repr(content)

    @server.tool()
    async def ask_name(ctx: Context) -> str:
        """Elicit a name from the user."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answer = await ctx.elicit("What is your name?", Name)
        return f"hello {answer.data.name}" if answer.action == "accept" and answer.data else answer.action

    _lifecycle_tools(server, state)
    _overlap_tool(server, state)
    return server, state


def _overlap_tool(server: MCPServer[Any], state: FeatureState) -> None:
    @server.tool()
    async def overlap(tag: str, group: str, parties: int, ctx: Context, steps: int = 0, sample: bool = False,
                      hang: bool = False) -> str:
        """Log "<tag> waiting", wait until `parties` calls of `group` are running, then report `steps`
        progress ("<tag> <n>") and log lines ("<tag> log <n>"); then sample (prompt: tag) or hang."""
        await _log(ctx, f"{tag} waiting")
        async with state.meeting:
            state.arrived[group] = state.arrived.get(group, 0) + 1
            state.meeting.notify_all()
            await state.meeting.wait_for(lambda: state.arrived[group] >= parties)
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"{tag} {step}")
            await _log(ctx, f"{tag} log {step}")
        if sample:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = await ctx.session.create_message(
                    [SamplingMessage(role="user", content=TextContent(type="text", text=tag))], max_tokens=10,
                    related_request_id=ctx.request_id)
            return result.content.text if isinstance(result.content, TextContent) else repr(result.content)
        if hang:
            await asyncio.Event().wait()
        return tag


def _lifecycle_tools(server: MCPServer[Any], state: FeatureState) -> None:
    """list_changed, hang-until-cancelled, env and crash."""
    @server.tool()
    async def change_tools(ctx: Context) -> str:
        """Announce notifications/tools/list_changed."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.session.send_tool_list_changed()  # the 2025-11-25 wire notification (not the 2026 bus)
        return "changed"

    @server.tool()
    async def hang(ctx: Context) -> str:
        """Never answers; records that it was cancelled."""
        await _log(ctx, "hanging")
        state.hang_started.set()
        if path := os.environ.get("FEATURE_CANCEL_FILE"):
            with open(path, "a") as handle:
                handle.write("started\n")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            state.cancelled.set()
            if path := os.environ.get("FEATURE_CANCEL_FILE"):
                with open(path, "a") as handle:
                    handle.write("cancelled\n")
            raise
        return "unreachable"

    @server.tool()
    def env(name: str) -> str:
        """One environment variable of the server process ("<unset>" when absent)."""
        return os.environ.get(name, "<unset>")

    @server.tool()
    def crash() -> str:
        """Kill the server process (stdio fault tests)."""
        os._exit(3)


if __name__ == "__main__":
    print("feature server starting", file=sys.stderr, flush=True)
    feature_server()[0].run("stdio")
