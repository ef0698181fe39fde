"""The same behaviours over every transport (streamable HTTP, legacy SSE, stdio) against a real SDK server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.transport.base import UpstreamSession
from tests.transport.conftest import CLIENT_CAPS, Features, Inbox, call, eventually, is_log, text_of


async def open_session(features: Features) -> tuple[UpstreamSession, Inbox]:
    holder: dict[str, UpstreamSession] = {}
    inbox = Inbox(lambda: holder.get("s"))
    holder["s"] = await features.upstream.connect(CLIENT_CAPS, inbox)
    return holder["s"], inbox


async def test_handshake_and_call(features: Features) -> None:
    session, _ = await open_session(features)
    assert session.initialize_result["serverInfo"]["name"] == "features"
    response = await session.request(call("echo", {"value": "hi"}, request_id="caller-7"))
    assert response["id"] == "caller-7" and text_of(response) == "hi"
    listed = await session.request({"jsonrpc": "2.0", "id": 99, "method": "tools/list"})
    assert listed["id"] == 99 and "hang" in {t["name"] for t in listed["result"]["tools"]}
    assert features.upstream.health().ready
    await session.close()
    await session.close()  # idempotent


async def test_progress_and_logging_reach_the_request_handler(features: Features) -> None:
    session, session_inbox = await open_session(features)
    request_inbox = Inbox()
    response = await session.request(call("progress", {"steps": 3}, token="tok-1"), on_message=request_inbox)
    assert text_of(response) == "done"
    progress = [m for m in request_inbox.messages if m["method"] == "notifications/progress"]
    assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
    assert all(m["params"]["progressToken"] == "tok-1" for m in progress)
    assert [m["params"]["data"] for m in request_inbox.messages if m["method"] == "notifications/message"] == [
        "log 1", "log 2", "log 3"]
    assert "notifications/progress" not in session_inbox.methods()


@pytest.mark.parametrize(("tool", "expected", "method"), [
    ("sample", "sampled answer", "sampling/createMessage"),
    ("ask_name", "hello Ada", "elicitation/create"),
])
async def test_server_to_client_request_round_trip(features: Features, tool: str, expected: str, method: str) -> None:
    session, _ = await open_session(features)
    request_inbox = Inbox(lambda: session)
    args: dict[str, Any] = {"prompt": "hello"} if tool == "sample" else {}
    response = await session.request(call(tool, args), on_message=request_inbox)
    assert text_of(response) == expected
    assert method in request_inbox.methods()


async def test_timeout_sends_cancelled_upstream(features: Features) -> None:
    session, _ = await open_session(features)
    with pytest.raises(GatewayError) as info:
        await session.request(call("hang"), timeout=1.0)
    assert info.value.reason == "upstream_timeout"
    await eventually(features.was_cancelled)
    # the session is still usable afterwards
    assert text_of(await session.request(call("echo", {"value": "after"}))) == "after"


async def test_caller_cancellation_sends_cancelled_upstream(features: Features) -> None:
    session, _ = await open_session(features)
    inbox = Inbox()
    task = asyncio.create_task(session.request(call("hang"), on_message=inbox))
    await inbox.wait_for(is_log("hanging"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(features.was_cancelled)


async def test_client_cancel_notification_is_remapped_to_the_upstream_id(features: Features) -> None:
    session, _ = await open_session(features)
    await session.request(call("echo", {"value": "x"}, request_id="c-1"))  # upstream ids move ahead of caller ids
    inbox = Inbox()
    task = asyncio.create_task(session.request(call("hang", request_id="c-1"), on_message=inbox))
    await inbox.wait_for(is_log("hanging"))
    await session.notify({"jsonrpc": "2.0", "method": "notifications/cancelled",
                          "params": {"requestId": "c-1", "reason": "user"}})
    await eventually(features.was_cancelled)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # a cancellation for a request that is not in flight is dropped, not sent with a foreign id
    await session.notify({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "nope"}})


async def test_fifty_concurrent_calls_get_their_own_results(features: Features) -> None:
    session, _ = await open_session(features)
    # int and string caller ids that look alike must stay apart (1 is not "1")
    ids: list[Any] = [i if i % 2 else str(i - 1) for i in range(50)]
    responses = await asyncio.gather(*(
        session.request(call("echo", {"value": f"v{n}"}, request_id=caller)) for n, caller in enumerate(ids)))
    for n, (caller, response) in enumerate(zip(ids, responses, strict=True)):
        assert response["id"] == caller and type(response["id"]) is type(caller)
        assert text_of(response) == f"v{n}"


async def test_list_changed_goes_to_the_session_handler(features: Features) -> None:
    session, session_inbox = await open_session(features)
    request_inbox = Inbox()
    await session.request(call("change_tools"), on_message=request_inbox)
    # not tied to one request (streamable HTTP: it arrives on the GET stream)
    await session_inbox.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed")
    assert "notifications/tools/list_changed" not in request_inbox.methods()


async def test_upstream_json_rpc_error_is_returned_not_raised(features: Features) -> None:
    session, _ = await open_session(features)
    response = await session.request({"jsonrpc": "2.0", "id": "e", "method": "no/such/method"})
    assert response["id"] == "e" and response["error"]["code"] == -32601
