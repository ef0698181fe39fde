"""What a real stdio child writes that is not one plain JSON message per line: a JSON-RPC batch (added by
the 2025-03-26 revision, removed in 2025-06-18), NaN / Infinity literals (not JSON at all) and numbers
no double holds (1e400: JSON, but read as infinity)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, call

# Negotiates the revision given as argv[1]; tools/call 'batch' is answered inside a JSON array (with a
# log notification before the answer), 'nan' with NaN in its result, 'huge' with 1e400, 'plain' normally.
BATCHING_CHILD = r'''
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    if req.get('method') == 'initialize':
        print(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'result': {'protocolVersion': sys.argv[1],
              'capabilities': {'tools': {}, 'logging': {}}, 'serverInfo': {'name': 'b', 'version': '1'}}}), flush=True)
    elif req.get('method') == 'tools/call':
        name, i = req['params']['name'], req['id']
        answer = {'jsonrpc': '2.0', 'id': i, 'result': {'content': [{'type': 'text', 'text': name}]}}
        if name == 'batch':
            log = {'jsonrpc': '2.0', 'method': 'notifications/message', 'params': {'level': 'info', 'data': 'in batch'}}
            print(json.dumps([log, answer]), flush=True)
        elif name == 'nan':
            print('{"jsonrpc":"2.0","id":%d,"result":{"content":[],"structuredContent":{"n":NaN}}}' % i, flush=True)
        elif name == 'huge':
            print('{"jsonrpc":"2.0","id":%d,"result":{"content":[],"structuredContent":{"n":1e400}}}' % i, flush=True)
        else:
            print(json.dumps(answer), flush=True)
'''

LIMIT_S = 10  # how long a call may take here: the upstream's own timeout is far longer


@asynccontextmanager
async def child(revision: str) -> AsyncIterator[StdioUpstream]:
    upstream = StdioUpstream(UpstreamConfig(name="batching", timeout_s=600,
                                            command=(sys.executable, "-c", BATCHING_CHILD, revision)))
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()



async def test_a_batch_from_a_2025_03_26_child_is_routed_item_by_item() -> None:
    async with child("2025-03-26") as upstream:
        inbox = Inbox()
        session = await upstream.connect(CLIENT_CAPS, inbox)
        # On the old code the answer inside the array was ignored and the call waited for upstream_timeout.
        response = await asyncio.wait_for(session.request(call("batch", request_id="mine")), LIMIT_S)
        assert response["id"] == "mine" and response["result"]["content"][0]["text"] == "batch"
        await inbox.wait_for(lambda m: (m.get("params") or {}).get("data") == "in batch")
        plain = await asyncio.wait_for(session.request(call("plain")), LIMIT_S)
        assert plain["result"]["content"][0]["text"] == "plain"


@pytest.mark.parametrize("revision", ["2024-11-05", "2025-11-25"])  # before batches were added, after removed
async def test_a_batch_under_another_revision_fails_the_call_it_answers_at_once(
        revision: str, caplog: pytest.LogCaptureFixture) -> None:
    async with child(revision) as upstream:
        inbox = Inbox()
        session = await upstream.connect(CLIENT_CAPS, inbox)
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(session.request(call("batch")), LIMIT_S)
        assert info.value.reason == "upstream_error"
        assert f"JSON-RPC batch, which protocol {revision} does not allow" in info.value.message
        assert any("does not allow" in r.getMessage() for r in caplog.records)
        assert not inbox.messages  # the rest of a batch the revision forbids is dropped
        plain = await asyncio.wait_for(session.request(call("plain")), LIMIT_S)  # the child still serves
        assert plain["result"]["content"][0]["text"] == "plain"


@pytest.mark.parametrize("revision", ["2025-03-26", "2025-11-25"])
async def test_nan_in_an_answer_is_upstream_error_at_once(revision: str) -> None:
    async with child(revision) as upstream:
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        # On the old code the call succeeded and the agent got null where the child wrote NaN.
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(session.request(call("nan")), LIMIT_S)
        assert info.value.reason == "upstream_error" and "NaN is not a JSON number" in info.value.message
        plain = await asyncio.wait_for(session.request(call("plain")), LIMIT_S)
        assert plain["result"]["content"][0]["text"] == "plain"


async def test_a_number_past_a_double_in_an_answer_is_upstream_error_at_once() -> None:
    async with child("2025-11-25") as upstream:
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        # On the old code the call succeeded and the agent got null where the child wrote 1e400.
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(session.request(call("huge")), LIMIT_S)
        assert info.value.reason == "upstream_error" and "1e400 is out of range" in info.value.message
        plain = await asyncio.wait_for(session.request(call("plain")), LIMIT_S)
        assert plain["result"]["content"][0]["text"] == "plain"
