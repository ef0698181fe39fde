"""Property-based fuzzing of the JSON-RPC and argument→Cedar layers, as units and through a real gateway.

Units: `jsonrpc.parse` on arbitrary bytes and JSON values only ever raises GatewayError;
`convert_args` on arbitrary JSON never raises and its output is bounded.
Through the gateway (one real gateway and a recording upstream on their own event loop in a thread,
shared by every example): random tools/call names and arguments never produce an internal error or
an HTTP 500, and the upstream receives exactly the calls the one-shape policy allows.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import jsonrpc
from gateway.authz.entities import DEFAULT_BOUNDS, LONG_MAX, LONG_MIN, Bounds, convert_args
from gateway.errors import GatewayError
from tests.conftest import bound_socket, with_port
from tests.hardening.conftest import RawClient, Recorder, one_shape_policies, reason, recording_server
from tests.support.servers import run_http_server

T = TypeVar("T")

LONG_EDGES = [LONG_MAX, LONG_MAX + 1, LONG_MIN, LONG_MIN - 1, 0, -1, 10**30, -(10**30)]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(LONG_EDGES), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=50),
    # Long strings (past Cedar's 4096-character cut) built cheaply from a short random piece.
    st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=8), st.integers(300, 800)),
    st.sampled_from(["widget", "__entity", "__extn", "\u202e", "\x00", "😀"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=80),
        st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(["sku", "__entity", "__extn", "__expr"])),
                        children, max_size=70),
    ),
    max_leaves=200,
)


# ---- units -------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_arbitrary_bytes_raises_only_gateway_errors(raw: bytes) -> None:
    try:
        message = jsonrpc.parse(raw, max_depth=16)
    except GatewayError as exc:
        assert exc.reason in {"parse_error", "invalid_request", "batch_not_supported"}
        return
    assert message.kind in {"request", "notification", "response"}


def _message(arguments: Any, *, ascii: bool = False) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": arguments}}
    return json.dumps(body, ensure_ascii=ascii)


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except GatewayError as exc:
        return exc.reason, None


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(lambda v: _message(v).encode("utf-8", "surrogatepass")),
                 json_values.map(lambda v: _message(v, ascii=True).encode()),  # \u escapes: lone surrogates too
                 json_values.map(lambda v: json.dumps(v).encode()),
                 st.binary(max_size=200)))
def test_the_fast_parser_decides_as_the_stdlib_parser(raw: bytes) -> None:
    """parse() tries orjson first; what it accepts must be what the stdlib path accepts, with the same value,
    and what it refuses must fail the same way (lone surrogates, NaN, huge integers, invalid UTF-8)."""
    def fast(data: bytes) -> Any:
        return jsonrpc.parse(data, max_depth=10_000).body
    def slow(data: bytes) -> Any:
        body = jsonrpc._parse_slowly(data, 10_000)
        return jsonrpc.classify(body).body if isinstance(body, dict) else body
    fast_reason, fast_value = _outcome(fast, raw)
    slow_reason, slow_value = _outcome(slow, raw)
    if slow_reason == "ok" and not isinstance(slow_value, dict):
        slow_reason = "batch_not_supported" if isinstance(slow_value, list) else "invalid_request"
    assert fast_reason == slow_reason
    if fast_reason == "ok":
        assert json.dumps(fast_value, sort_keys=True) == json.dumps(slow_value, sort_keys=True)


@settings(max_examples=150, deadline=None)
@given(json_values, st.one_of(st.none(), st.integers(), st.text(max_size=300), st.booleans(), st.floats()),
       st.one_of(st.sampled_from(["tools/call", "ping", "notifications/x", ""]), st.text(max_size=20)))
def test_parse_arbitrary_json_messages(params: Any, request_id: Any, method: str) -> None:
    for body in ({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                 {"jsonrpc": "2.0", "method": method, "params": params},
                 {"jsonrpc": "2.0", "id": request_id, "result": params},
                 params):
        raw = json.dumps(body).encode()
        try:
            message = jsonrpc.parse(raw, max_depth=16)
        except GatewayError as exc:
            assert exc.reason in {"parse_error", "invalid_request", "batch_not_supported"}
            continue
        # What passes is well formed: a request has a usable id and an object (or no) params.
        if message.kind == "request":
            assert isinstance(message.id, int | str) and not isinstance(message.id, bool)
            assert isinstance(message.params, dict)
        if message.kind == "notification":
            assert message.method.startswith("notifications/")
        jsonrpc.dumps(message.body)  # whatever parses can be written again


def _size(value: Any, depth: int = 1) -> tuple[int, int]:
    """(nodes, depth) of a Cedar JSON value (a decimal is one leaf)."""
    if isinstance(value, dict) and "__extn" in value:
        return 1, depth
    if isinstance(value, dict):
        inner = [_size(v, depth + 1) for v in value.values()]
        return 1 + sum(n for n, _ in inner), max([depth, *(d for _, d in inner)])
    if isinstance(value, list):
        inner = [_size(v, depth + 1) for v in value]
        return 1 + sum(n for n, _ in inner), max([depth, *(d for _, d in inner)])
    return 1, depth


def _check_cedar_value(value: Any, bounds: Bounds) -> None:
    if isinstance(value, dict):
        if "__extn" in value:
            assert set(value) == {"__extn"} and value["__extn"]["fn"] == "decimal"
            return
        assert not {"__entity", "__expr"} & set(value), "an argument smuggled a Cedar escape"
        assert len(value) <= bounds.max_keys
        for item in value.values():
            assert item is not None
            _check_cedar_value(item, bounds)
    elif isinstance(value, list):
        assert len(value) <= bounds.max_items
        kinds = {type(v).__name__ if not (isinstance(v, dict) and "__extn" in v) else "decimal" for v in value}
        assert len(kinds) <= 1, "a Cedar set must be homogeneous"
        for item in value:
            _check_cedar_value(item, bounds)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        assert LONG_MIN <= value <= LONG_MAX
    else:
        assert isinstance(value, str) and len(value) <= bounds.max_str


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_convert_args_never_raises_and_is_bounded(args: Any) -> None:
    bounds = Bounds(max_depth=6, max_items=20, max_keys=20, max_str=100)
    record, truncated = convert_args(args, bounds)
    assert isinstance(record, dict) and isinstance(truncated, bool)
    nodes, depth = _size(record)
    assert depth <= bounds.max_depth + 1
    assert nodes <= sum(max(bounds.max_items, bounds.max_keys) ** d for d in range(bounds.max_depth + 2))
    _check_cedar_value(record, bounds)
    json.dumps(record)  # always serialisable for cedarpy
    default, _ = convert_args(args, DEFAULT_BOUNDS)
    _check_cedar_value(default, DEFAULT_BOUNDS)


# ---- through a real gateway --------------------------------------------------------------------

@dataclass
class LoopGateway:
    """A gateway and its recording upstream running on a private event loop in a thread."""

    loop: asyncio.AbstractEventLoop
    recorder: Recorder
    client: RawClient

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _start(stack: AsyncExitStack, policies: Path, recorder: Recorder) -> RawClient:
    from gateway.app import create_app, serving_runner
    from gateway.config import parse_config

    url = await stack.enter_async_context(run_http_server(recording_server(recorder)))
    sock = bound_socket()
    config = parse_config(with_port({
        "upstreams": [{"name": "rec", "url": url}],
        "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
        "policies": {"dir": str(policies), "watch": False},
        "decision_log": {"path": str(policies.parent / "decisions.jsonl")},
    }, sock.getsockname()[1]))
    runner = await serving_runner(await create_app(config), shutdown_timeout=5, access_log=None)
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()
    http = await stack.enter_async_context(aiohttp.ClientSession())
    client = RawClient(http, f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")
    await client.initialize()
    return client


async def _close(stack: AsyncExitStack) -> None:
    await stack.aclose()
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]  # e.g. the SDK's SSE watchers
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopGateway]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-gateway-loop", daemon=True)
    thread.start()
    stack = AsyncExitStack()
    recorder = Recorder()
    policies = one_shape_policies(tmp_path_factory.mktemp("fuzz") / "policies")
    try:
        client = asyncio.run_coroutine_threadsafe(_start(stack, policies, recorder), loop).result(60)
        yield LoopGateway(loop, recorder, client)
    finally:
        asyncio.run_coroutine_threadsafe(_close(stack), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def allowed(name: str, arguments: Any) -> bool:
    """The one-shape policy, restated: rec/lookup with sku == "widget" and nothing cut."""
    if name != "rec__lookup" or not isinstance(arguments, dict):
        return False
    record, truncated = convert_args(arguments)
    return record.get("sku") == "widget" and not truncated


names = st.one_of(st.sampled_from(["rec__lookup", "rec__transfer", "rec__", "__lookup", "lookup", "rec__lookup "]),
                  st.text(max_size=40))
arguments = st.one_of(
    st.fixed_dictionaries({"sku": st.sampled_from(["widget", "gadget", "Widget", "widget\x00"])},
                          optional={"n": json_values, "extra": json_values, "__entity": json_values}),
    json_values,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(name=names, args=arguments, request_id=st.one_of(st.integers(0, 2**53), st.text(min_size=1, max_size=20)))
def test_random_calls_never_crash_and_only_allowed_calls_reach_the_upstream(
        fuzz_gateway: LoopGateway, name: str, args: Any, request_id: Any) -> None:
    recorder = fuzz_gateway.recorder
    before = len(recorder.calls)
    status, _, body = fuzz_gateway.run(fuzz_gateway.client.call(name, args, request_id=request_id))
    assert status != 500, body
    assert reason(body) != "internal_error", body
    assert isinstance(body, dict) and body.get("id") == request_id, body
    received = recorder.calls[before:]
    if allowed(name, args):
        assert status == 200 and "result" in body, (name, args, body)
        assert received == [("lookup", args)]
    else:
        assert "error" in body, (name, args, body)
        assert received == [], (name, args, received)


def test_nested_mixed_arrays_do_not_amplify() -> None:
    # Each level of mixed arrays becomes canonical JSON inside a string, escaping quotes again:
    # without a cut, 480 KB of arguments became a 15 MB Cedar context (2x per level).
    value: Any = ['"' * 4000, 1]
    for _ in range(5):
        value = [value, 1]
    args = {"a": [value] * 60}
    record, truncated = convert_args(args)
    assert truncated
    assert len(json.dumps(record)) <= 2 * len(json.dumps(args))
    _check_cedar_value(record, DEFAULT_BOUNDS)
