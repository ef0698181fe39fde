"""A real stdio child that writes a line past the 16 MiB cap of one message: the call it answers fails at once with
upstream_error, as over HTTP (not at its timeout, upstream_timeout), whichever order the answer's members are in
(the Python SDK writes `jsonrpc, id, result`, the TypeScript SDK `result, jsonrpc, id`); an oversized request of
the child's own answers nothing, so it fails no call, though its id may equal one; the child and later calls go on."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.events import MAX_MESSAGE_BYTES
from gateway.transport.stdio import StdioUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, text_of

pytestmark = pytest.mark.asyncio

# tools/call 'head': the answer with its id first; 'tail': with its id last; 'request': an oversized request of
# the child's own carrying the call's id, then the call's plain answer; anything else: a plain answer.
OVERSIZED_CHILD = r'''
import json, sys
BIG = 'x' * (int(sys.argv[1]) + 1024)
for line in sys.stdin:
    req = json.loads(line)
    if req.get('method') == 'initialize':
        print(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'result': {'protocolVersion': '2025-11-25',
              'capabilities': {'tools': {}}, 'serverInfo': {'name': 'o', 'version': '1'}}}), flush=True)
    elif req.get('method') == 'tools/call':
        name, i = req['params']['name'], req['id']
        result = {'content': [{'type': 'text', 'text': name}]}
        big = {'content': [{'type': 'text', 'text': BIG}]}
        if name == 'head':
            print(json.dumps({'jsonrpc': '2.0', 'id': i, 'result': big}), flush=True)
        elif name == 'tail':
            print(json.dumps({'result': big, 'jsonrpc': '2.0', 'id': i}), flush=True)
        else:
            if name == 'request':
                print(json.dumps({'jsonrpc': '2.0', 'method': 'sampling/createMessage', 'params': {'messages': [],
                      'maxTokens': 1, 'systemPrompt': BIG}, 'id': i}), flush=True)
            print(json.dumps({'jsonrpc': '2.0', 'id': i, 'result': result}), flush=True)
'''


@pytest.fixture
async def child() -> AsyncIterator[StdioUpstream]:
    # A timeout far past what the test waits: on the old code each oversized answer ended at it, upstream_timeout.
    upstream = StdioUpstream(UpstreamConfig(name="over", timeout_s=120, command=(
        sys.executable, "-c", OVERSIZED_CHILD, str(MAX_MESSAGE_BYTES))))
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@pytest.mark.parametrize("order", ["head", "tail"])
async def test_an_oversized_answer_fails_its_call_at_once(child: StdioUpstream, order: str) -> None:
    view = await child.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as failed:
        await asyncio.wait_for(view.request(call(order, request_id="a")), 60)
    assert failed.value.reason == "upstream_error", failed.value
    assert text_of(await view.request(call("plain", request_id="b"))) == "plain"
    assert child.health().restarts == 0


async def test_an_oversized_request_of_the_child_fails_no_call(child: StdioUpstream) -> None:
    view = await child.connect(CLIENT_CAPS, Inbox())
    assert text_of(await asyncio.wait_for(view.request(call("request", request_id="a")), 60)) == "request"
