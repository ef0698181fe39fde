"""JSON-RPC 2.0 framing: parse and validate one inbound message, build responses.

Hostile input is bounded here before anything else looks at it: invalid UTF-8, JSON nesting
deeper than the configured limit, and messages that are neither a request, a notification nor a
response are rejected with a stable reason. A batch (a JSON array; only the 2025-03-26 revision has
them) is refused by `parse` with `Batch`, a `batch_not_supported` error that carries the array for
the callers that do support batches (`classify_batch` checks its items).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

import orjson

from gateway.errors import GatewayError

Kind = Literal["request", "notification", "response"]

# A `\uD800`-`\uDFFF` escape: the only way a lone surrogate (valid JSON, not Unicode) gets in.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_NOT_DIGITS = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


class Message:
    """One classified message. `id`, `method` and `params` are read from `body` once, here: a call reads them ~20
    times, and a property each time cost ~1 % of the gateway's instructions. Nothing replaces a body's id, method
    or params after classification (upstream messages are built anew: forward.py)."""

    __slots__ = ("body", "id", "kind", "method", "params")

    def __init__(self, kind: Kind, body: dict[str, Any]) -> None:
        self.kind = kind
        self.body = body
        self.id: Any = body.get("id")
        self.method = str(body.get("method", ""))
        params = body.get("params")
        self.params: dict[str, Any] = params if isinstance(params, dict) else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and (self.kind, self.body) == (other.kind, other.body)

    __hash__ = None  # type: ignore[assignment]  # (a dict body: unhashable, as the dataclass was)

    def __repr__(self) -> str:
        return f"Message(kind={self.kind!r}, body={self.body!r})"


# Python's parser gives up (RecursionError) at about this depth, whatever max_json_depth says.
_PARSER_DEPTH = 900
MAX_BATCH = 100  # messages in one batch: each request in it is a call of its own
META_TASK_KEY = "customs/task"  # `_meta` key of an agent-chosen task id (docs/credentials.md, "Tasks")


class Batch(GatewayError):
    """The body was a JSON array: `batch_not_supported`, unless the caller answers `items` as a batch."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__("batch_not_supported")
        self.items = items


class Invalid(GatewayError):
    """A refused message whose own id could be read: JSON-RPC answers it with that id (null is only for
    an id that cannot be read), so a client waiting on the id learns why instead of waiting forever."""

    def __init__(self, cause: GatewayError, request_id: Any) -> None:
        super().__init__(cause.reason, cause.message, data=cause.data)
        self.request_id = request_id


def refused_id(exc: BaseException, default: Any = None) -> Any:
    """The id an error about an inbound message answers (`Invalid` carries the message's own)."""
    return exc.request_id if isinstance(exc, Invalid) else default


def _with_id(exc: GatewayError, body: dict[str, Any]) -> GatewayError:
    request_id = body.get("id")
    if "result" in body or "error" in body or not _valid_id(request_id) or isinstance(exc, Invalid):
        return exc  # a response is never answered, and an unreadable id is answered as null
    return Invalid(exc, request_id)


def _depth_ok(value: Any, limit: int) -> bool:
    """Iterative depth check: recursion on attacker-controlled nesting is itself a risk."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


MAX_ID_CHARS = 256  # a string id past it is refused: ids are kept per call in flight and echoed in every answer


def is_id(value: Any) -> bool:
    """A JSON-RPC id: a string or an integer. Not a bool: Python's True equals 1, and would name request 1."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _valid_id(value: Any) -> bool:
    return is_id(value) and (not isinstance(value, str) or len(value) <= MAX_ID_CHARS)


def _id_problem(value: Any) -> str:
    if isinstance(value, str):  # a string, only too long
        return (f"Invalid request: id must be an integer or a string of at most {MAX_ID_CHARS} characters "
                f"(this one has {len(value)})")
    return "Invalid request: id must be a string or an integer"


def parse(raw: bytes, *, max_depth: int = 64) -> Message:
    """Parse one JSON-RPC message or raise GatewayError (parse_error / invalid_request / batch)."""
    try:
        body = fast_loads(raw)
    except ValueError:
        body = _parse_slowly(raw, max_depth)
    if isinstance(body, list):
        if raw.count(b"{") + raw.count(b"[") >= max_depth and not _depth_ok(body, max_depth):
            raise _too_deep(max_depth)
        raise Batch(body)
    if not isinstance(body, dict):
        raise GatewayError("invalid_request", "Invalid request: expected a JSON object")
    # A message cannot nest deeper than it has brackets: most are far too small to need the walk.
    try:
        if raw.count(b"{") + raw.count(b"[") >= max_depth and not _depth_ok(body, max_depth):
            raise _too_deep(max_depth)
        return classify(body)
    except GatewayError as exc:
        raise _with_id(exc, body) from None


def fast_loads(raw: bytes | str) -> Any:
    """orjson's parse (several times faster) where it is exact, else ValueError: the stdlib decides.

    orjson refuses NaN, lone surrogates, invalid UTF-8 and nesting past 1024, and reads an integer
    past 64 bits as a float: any run of 19 digits leaves the value to the stdlib, which keeps it exact.
    """
    if isinstance(raw, bytes):
        # Fewer than 19 digits in all cannot hold a run of 19: counting them (one C pass) is several
        # times cheaper than the regex, which only bodies rich in digits still need.
        long_number = len(raw.translate(None, _NOT_DIGITS)) >= 19 and _LONG_DIGITS.search(raw) is not None
    else:
        long_number = _LONG_DIGITS_TEXT.search(raw) is not None
    if long_number:
        raise ValueError("a number too long for orjson to keep exact")
    return orjson.loads(raw)  # its JSONDecodeError is a ValueError


def _too_deep(max_depth: int) -> GatewayError:
    return GatewayError("invalid_request", f"Invalid request: JSON nested deeper than {max_depth}")


def _parse_slowly(raw: bytes, max_depth: int) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError("parse_error", "Parse error: body is not valid UTF-8") from exc
    try:
        # Depth is bounded by the JSON decoder's own recursion guard too; checked precisely by the caller.
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        # Nested past what the parser reads (about 1,000 levels): the depth refusal, as for a body a little
        # past max_json_depth, not "not valid JSON" (it may well be valid).
        raise (_too_deep(max_depth) if max_depth < _PARSER_DEPTH else GatewayError(
            "invalid_request", "Invalid request: JSON nested deeper than the parser reads")) from None
    except ValueError as exc:
        raise GatewayError("parse_error", "Parse error: body is not valid JSON") from exc
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(body):
        # Lone surrogates cannot be re-encoded as UTF-8: refuse them here, not when forwarding.
        raise GatewayError("parse_error", "Parse error: body contains a lone surrogate (not Unicode)")
    return body


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no double: as infinity it would reach the upstream and then fail every
    # later step (canonical JSON, the digest, the record) after the call had already run.
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text[:32]} is out of range for a number")
    return value


def classify(body: dict[str, Any]) -> Message:
    if body.get("jsonrpc") != "2.0":
        raise GatewayError("invalid_request", 'Invalid request: "jsonrpc" must be "2.0"')
    has_id = "id" in body
    if "method" in body:
        if not isinstance(body["method"], str) or not body["method"]:
            raise GatewayError("invalid_request", "Invalid request: method must be a non-empty string")
        if "params" in body and body["params"] is None:
            # `"params": null` is what several clients send for "no params", and the SDK's own server
            # reads it so: a transparent gateway must not refuse what the servers behind it accept.
            del body["params"]
        if "params" in body:
            if not isinstance(body["params"], dict):
                raise GatewayError("invalid_request", "Invalid request: params must be an object")
            if "_meta" in body["params"]:
                _check_meta(body["params"]["_meta"])
        if "result" in body or "error" in body:
            raise GatewayError("invalid_request", "Invalid request: a request cannot carry result or error")
        if not has_id:
            if not body["method"].startswith("notifications/"):
                # Every MCP notification is `notifications/*`; anything else without an id is a
                # request posing as a notification (it would get no answer and bypass the pipeline).
                raise GatewayError("invalid_request", "Invalid request: a request needs an id")
            return Message("notification", body)
        if not _valid_id(body["id"]):
            raise GatewayError("invalid_request", _id_problem(body["id"]))
        if body["method"].startswith("notifications/"):
            raise GatewayError("invalid_request", "Invalid request: notifications must not carry an id")
        return Message("request", body)
    if has_id and (("result" in body) != ("error" in body)) and _valid_id(body["id"]):
        if not (_error_object(body["error"]) if "error" in body else isinstance(body["result"], dict)):
            # Passed on, the upstream's SDK cannot read it (its request waits out its timeout) while the agent was
            # told 202; refused, the agent learns and may answer again (the request is still awaited).
            raise GatewayError("invalid_request", "Invalid request: a result must be an object, an error an object "
                                                  "with an integer code and a string message")
        return Message("response", body)
    raise GatewayError("invalid_request", "Invalid request: not a request, notification or response")


def _error_object(error: Any) -> bool:
    """A JSON-RPC error object: an integer code (not a bool) and a string message."""
    return isinstance(error, dict) and type(error.get("code")) is int and isinstance(error.get("message"), str)


def _check_meta(meta: Any) -> None:
    """`params._meta` must be an object and its progressToken a string or number (MCP): the gateway
    copies the one and keys progress routes by the other, so anything else would fail mid-call."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise GatewayError("invalid_request", "Invalid request: params._meta must be an object")
    token = meta.get("progressToken")
    # (a bool is a Python int: JSON true would pass, and compare equal to a progressToken 1 when routed)
    if token is not None and (isinstance(token, bool) or not isinstance(token, (str, int, float))):
        raise GatewayError("invalid_request", "Invalid request: progressToken must be a string or a number")
    task = meta.get(META_TASK_KEY)
    if task is not None and not is_task_id(task):
        # Read as no task, the call would be counted and credentialed under its session's task, one the
        # agent did not name and whose end it cannot ask for (task_end refuses the same values).
        raise GatewayError("invalid_request",
                           f"Invalid request: _meta {META_TASK_KEY} must be 1 to 128 printable characters")


def is_task_id(value: Any) -> bool:
    """An agent-chosen task id (`_meta` `customs/task`, `notifications/customs/task_end`'s `task`)."""
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()


def classify_batch(items: list[Any]) -> list[Message | GatewayError]:
    """The messages of a batch, each classified on its own (an invalid one is its own error)."""
    if not items:
        raise GatewayError("invalid_request", "Invalid request: an empty batch")
    if len(items) > MAX_BATCH:
        raise GatewayError("invalid_request", f"Invalid request: a batch of more than {MAX_BATCH} messages")
    out: list[Message | GatewayError] = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise GatewayError("invalid_request", "Invalid request: expected a JSON object")
            out.append(classify(item))
        except GatewayError as exc:
            out.append(_with_id(exc, item) if isinstance(item, dict) else exc)
    return out


def result(request_id: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def dumps(message: dict[str, Any] | list[Any]) -> bytes:
    """Compact UTF-8 JSON of a message we send (to a client or an upstream)."""
    try:
        return orjson.dumps(message)  # several times faster than json.dumps, the same JSON text
    except TypeError:  # integers past 64 bits, lone surrogates, non-string keys: the stdlib path below
        pass
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate from an upstream: keep it as the JSON escape it came as
        return json.dumps(message, separators=(",", ":")).encode()
