"""JSON-RPC framing of hostile and valid input."""

from __future__ import annotations

import json

import pytest

from gateway import jsonrpc
from gateway.errors import REASONS, GatewayError, error_object, forget_traceback, to_wire


def reason_of(raw: bytes, depth: int = 64) -> str:
    with pytest.raises(GatewayError) as info:
        jsonrpc.parse(raw, max_depth=depth)
    return info.value.reason


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "parse_error"),
    (b"\xff\xfe{}", "parse_error"),
    (b'{"jsonrpc":"2.0","id":1,"method":"x","params":NaN}', "parse_error"),
    (b"[]", "batch_not_supported"),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', "batch_not_supported"),
    (b'"hello"', "invalid_request"),
    (b'{"id":1,"method":"ping"}', "invalid_request"),
    (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":""}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":"notifications/cancelled"}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', "invalid_request"),
    # MCP's progressToken is a string or a number: JSON true is neither (Python's bool is an int, so it passed,
    # and a call with progressToken true shared the progress routes of one with progressToken 1)
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":true}}}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":false}}}', "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":{"a":1}}}}', "invalid_request"),
])
def test_rejections(raw: bytes, reason: str) -> None:
    assert reason_of(raw) == reason


@pytest.mark.parametrize(("request_id", "message"), [
    ("x" * 257, "Invalid request: id must be an integer or a string of at most 256 characters (this one has 257)"),
    (1.5, "Invalid request: id must be a string or an integer"),
])
def test_a_refused_id_is_named_for_what_is_wrong_with_it(request_id: object, message: str) -> None:
    """A string id past 256 characters was refused as `id must be a string or an integer`, though it is one."""
    with pytest.raises(GatewayError) as info:
        jsonrpc.parse(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}).encode())
    assert info.value.message == message
    assert jsonrpc.parse(json.dumps({"jsonrpc": "2.0", "id": "x" * 256, "method": "ping"}).encode()).id == "x" * 256


def test_depth_limit() -> None:
    nested = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":' + b"[" * 100 + b"]" * 100 + b"}}"
    assert reason_of(nested, depth=64) == "invalid_request"
    assert jsonrpc.parse(nested, max_depth=200).kind == "request"


def test_extreme_nesting_is_a_clean_error() -> None:
    # Past the depth the parser reads, the depth refusal too (it was parse_error, "not valid JSON").
    assert reason_of(b"[" * 200_000 + b"]" * 200_000) == "invalid_request"
    assert reason_of(b'{"a":' * 100_000 + b"1" + b"}" * 100_000) == "invalid_request"
    assert reason_of(b"[" * 200_000) == "invalid_request"  # nested that deep before it turns out cut short
    with pytest.raises(GatewayError, match="deeper than the parser reads"):
        jsonrpc.parse(b"[" * 5_000 + b"]" * 5_000, max_depth=10_000)


def test_kinds() -> None:
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":"a","method":"ping"}').kind == "request"
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').kind == "notification"
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":3,"result":{}}').kind == "response"


def test_wire_errors_are_stable_and_leak_nothing() -> None:
    body, status = to_wire(RuntimeError("secret internals /etc/passwd"), 7)
    assert body == {"jsonrpc": "2.0", "id": 7,
                    "error": {"code": -32603, "message": "Internal error", "data": {"reason": "internal_error"}}}
    assert status == 500
    error, status = error_object(GatewayError("unauthenticated"))
    assert status == 401 and error["data"]["reason"] == "unauthenticated"
    with pytest.raises(ValueError):
        GatewayError("not_a_documented_reason")


def test_error_table_is_documented() -> None:
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    for reason, spec in REASONS.items():
        assert f"`{reason}`" in doc, reason
        assert str(spec.code) in doc


@pytest.mark.parametrize("number", ["9223372036854775807", "-9223372036854775809", "18446744073709551616",
                                    "123456789012345678901234", "1.0000000000000000000001"])
def test_long_numbers_keep_their_exact_value_both_ways(number: str) -> None:
    """orjson would read integers past 64 bits as floats: such bodies take the exact (stdlib) path."""
    from gateway.transport.events import parse_json
    raw = '{"jsonrpc":"2.0","id":1,"result":{"n":' + number + '}}'
    expected = json.loads(raw)
    assert jsonrpc.parse(raw.encode()).body == expected
    assert parse_json(raw.encode()) == parse_json(raw) == expected
    assert type(parse_json(raw)["result"]["n"]) is type(expected["result"]["n"])


def test_an_answered_error_forgets_every_traceback_of_its_chain() -> None:
    """An answered error must not keep the frames it passed through (and the call's objects in them) alive."""
    try:
        try:
            try:
                raise KeyError("inner")
            except KeyError as exc:
                raise ValueError("middle") from exc
        except ValueError:
            raise GatewayError("upstream_error")  # noqa: B904 (implicit __context__, on purpose)
    except GatewayError as exc:
        answered = exc
    chain = [answered, answered.__context__, answered.__context__.__cause__]  # type: ignore[union-attr]
    assert all(e is not None and e.__traceback__ is not None for e in chain)
    forget_traceback(answered)
    assert [e.__traceback__ for e in chain if e is not None] == [None, None, None]
    assert to_wire(answered, 1)[0]["error"]["data"]["reason"] == "upstream_error"  # still answerable
