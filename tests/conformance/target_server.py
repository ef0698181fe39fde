"""A Python MCP server that implements what the official conformance suite's server scenarios call.

Built with the mcp SDK (MCPServer); the tool, resource and prompt names are those the suite
(`@modelcontextprotocol/conformance`, `conformance server --url ...`) asks for: test_simple_text,
test_image_content, test_tool_with_logging, test_sampling, test_elicitation, test://static-text,
test_simple_prompt and so on. The conformance tests run the suite against it directly and
through the gateway's `/mcp/{upstream}`.

Run: python tests/conformance/target_server.py --port N   (streamable HTTP at http://127.0.0.1:N/mcp;
--port 0 picks a free port). The first line printed is `listening on <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
import warnings
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

# A 1x1 PNG and a tiny (empty) WAV: the suite only checks type, data and mimeType.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
STEP_DELAY_S = 0.05  # the suite asks for ~50 ms between log/progress notifications

AnyContext = Context[Any, Any]


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client that reconnects with Last-Event-ID gets the rest (SEP-1699)."""

    def __init__(self) -> None:
        self._events: list[tuple[StreamId, EventId, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        for s, event_id, message in self._events:
            if s == stream and int(event_id) > int(last_event_id) and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


def _add_content_tools(server: MCPServer[Any]) -> None:
    @server.tool(description="Returns one text block")
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @server.tool(description="Returns one PNG image block")
    def test_image_content() -> list[types.ImageContent]:
        return [types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]

    @server.tool(description="Returns one WAV audio block")
    def test_audio_content() -> list[types.AudioContent]:
        return [types.AudioContent(type="audio", data=WAV_EMPTY, mime_type="audio/wav")]

    @server.tool(description="Returns an embedded text resource")
    def test_embedded_resource() -> list[types.EmbeddedResource]:
        return [types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."))]

    @server.tool(description="Returns text, image and resource blocks")
    def test_multiple_content_types() -> list[types.TextContent | types.ImageContent | types.EmbeddedResource]:
        return [
            types.TextContent(type="text", text="Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri="test://mixed-content-resource", mime_type="application/json",
                text=json.dumps({"test": "data", "value": 123}))),
        ]

    @server.tool(description="Always fails with a tool error (isError: true)")
    def test_error_handling() -> str:
        raise RuntimeError("This tool intentionally returns an error for testing")

    schema_2020 = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"address": {"type": "object",
                              "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    }

    @server.tool(description="Tool with JSON Schema 2020-12 features")
    def json_schema_2020_12_tool(name: str = "", address: dict[str, Any] | None = None) -> str:
        return f"name={name} address={json.dumps(address)}"

    # The suite checks that $schema, $defs and additionalProperties survive in tools/list verbatim.
    server._tool_manager.get_tool("json_schema_2020_12_tool").parameters = schema_2020  # type: ignore[union-attr]


def _add_session_tools(server: MCPServer[Any]) -> None:
    @server.tool(description="Sends three info log notifications while it runs")
    async def test_tool_with_logging(ctx: AnyContext) -> str:
        for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.session.send_log_message(level="info", data=message, related_request_id=ctx.request_id)
            await asyncio.sleep(STEP_DELAY_S)  # the suite wants notifications spread over the call
        return "Tool with logging executed successfully"

    @server.tool(description="Reports progress 0, 50, 100 of 100")
    async def test_tool_with_progress(ctx: AnyContext) -> str:
        for step in (0, 50, 100):
            await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
            await asyncio.sleep(STEP_DELAY_S)  # the suite wants notifications spread over the call
        return "Tool with progress executed successfully"

    @server.tool(description="Asks the client to sample an LLM completion")
    async def test_sampling(prompt: str, ctx: AnyContext) -> str:
        result = await ctx.session.create_message(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=100, related_request_id=ctx.request_id)
        content = result.content
        text = content.text if isinstance(content, types.TextContent) else "No response"
        return f"LLM response: {text}"

    @server.tool(description="Closes its SSE stream mid-call so the client reconnects (SEP-1699)")
    async def test_reconnection(ctx: AnyContext) -> str:
        await ctx.session.send_log_message(level="info", data="Before disconnect", related_request_id=ctx.request_id)
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)  # the client reconnects after the 100 ms retry interval
        await ctx.session.send_log_message(level="info", data="After reconnect", related_request_id=ctx.request_id)
        return "Reconnection test completed"


ELICIT_USER = {
    "type": "object",
    "properties": {"username": {"type": "string", "description": "User's response"},
                   "email": {"type": "string", "description": "User's email address"}},
    "required": ["username", "email"],
}
ELICIT_DEFAULTS = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}
ELICIT_ENUMS = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": [{"const": "value1", "title": "First Option"},
                                                     {"const": "value2", "title": "Second Option"},
                                                     {"const": "value3", "title": "Third Option"}]},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                                             {"const": "value2", "title": "Second Choice"},
                                                             {"const": "value3", "title": "Third Choice"}]}},
    },
}


def _add_elicitation_tools(server: MCPServer[Any]) -> None:
    async def elicit(ctx: AnyContext, message: str, schema: dict[str, Any]) -> types.ElicitResult:
        # Raw schemas (not pydantic models) so the wire shape is exactly what the suite checks.
        result: types.ElicitResult = await ctx.session.elicit_form(
            message=message, requested_schema=schema, related_request_id=ctx.request_id)
        return result

    @server.tool(description="Asks the user for a username and email")
    async def test_elicitation(message: str, ctx: AnyContext) -> str:
        result = await elicit(ctx, message, ELICIT_USER)
        return f"User response: action={result.action}, content={json.dumps(result.content or {})}"

    @server.tool(description="Elicitation with defaults for every primitive type (SEP-1034)")
    async def test_elicitation_sep1034_defaults(ctx: AnyContext) -> str:
        result = await elicit(ctx, "Please provide user information", ELICIT_DEFAULTS)
        return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"

    @server.tool(description="Elicitation with the five enum schema variants (SEP-1330)")
    async def test_elicitation_sep1330_enums(ctx: AnyContext) -> str:
        result = await elicit(ctx, "Please select options", ELICIT_ENUMS)
        return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


def _add_resources(server: MCPServer[Any]) -> None:
    @server.resource("test://static-text", mime_type="text/plain", description="A static text resource")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", mime_type="image/png", description="A static binary resource")
    def static_binary() -> bytes:
        return base64.b64decode(PNG_1X1)

    @server.resource("test://template/{id}/data", mime_type="application/json", description="A templated resource")
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource("test://watched-resource", mime_type="text/plain", description="A subscribable resource")
    def watched() -> str:
        return "Watched resource content"


def _add_prompts(server: MCPServer[Any]) -> None:
    @server.prompt(description="A simple prompt without arguments")
    def test_simple_prompt() -> list[dict[str, Any]]:
        return [{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}]

    @server.prompt(description="A prompt with two required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[dict[str, Any]]:
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [{"role": "user", "content": {"type": "text", "text": text}}]

    @server.prompt(description="A prompt that embeds a resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[dict[str, Any]]:  # wire name
        resource = {"uri": resourceUri, "mimeType": "text/plain", "text": "Embedded resource content for testing."}
        return [{"role": "user", "content": {"type": "resource", "resource": resource}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}]

    @server.prompt(description="A prompt with an image")
    def test_prompt_with_image() -> list[dict[str, Any]]:
        return [{"role": "user", "content": {"type": "image", "data": PNG_1X1, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}]


def _add_handlers(server: MCPServer[Any]) -> None:
    """logging/setLevel, resources/(un)subscribe and completion/complete: acknowledged, no effect."""
    lowlevel = server._lowlevel_server
    subscribed: set[str] = set()

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))

    lowlevel.add_request_handler("completion/complete", types.CompleteRequestParams, complete)


def build_server() -> MCPServer[Any]:
    """The conformance target: every tool, resource and prompt the suite's server scenarios use."""
    server: MCPServer[Any] = MCPServer("customs-conformance-target", version="1.0.0")
    _add_content_tools(server)
    _add_session_tools(server)
    _add_elicitation_tools(server)
    _add_resources(server)
    _add_prompts(server)
    _add_handlers(server)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="target_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # the suite exercises deprecated features (logging, sampling) on purpose
    app = build_server().streamable_http_app(event_store=MemoryEventStore(), retry_interval=100, host="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
