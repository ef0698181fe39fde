"""A scripted stdio MCP child that misbehaves at the byte level, once, on one request (test_hard_stdio_garbage.py).

Run as `python stdio_garbage_child.py KIND KEY MARK`: the first request matching KEY (a method; tools/call 'garbage',
resources/read 'file:///garbage' and prompts/get 'garbage' for those; `notification` for the agent's
notifications/roots/list_changed; `answer` for the agent's answer to the child's roots/list) is answered with
garbage KIND (GARBAGE below) instead of, or before, its answer. MARK is a file made when the garbage is served, so
a restarted child (and every later request) behaves. tools/call 'ask' first asks the client roots/list.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

OUT = sys.stdout.buffer
MIB = 1024 * 1024


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def answer(rid: Any, result: dict[str, Any]) -> bytes:
    return line({"jsonrpc": "2.0", "id": rid, "result": result})


def write(data: bytes) -> None:
    OUT.write(data)
    OUT.flush()


def stall() -> None:
    while True:
        time.sleep(3600)


def stderr_flood(lines: bool) -> None:
    if lines:
        for _ in range(2 * 1024):  # 2 MiB in 1 KiB lines
            sys.stderr.write("x" * 1023 + "\n")
    else:
        sys.stderr.write("y" * (20 * MIB) + "\n")  # one line past the 16 MiB reader limit
    sys.stderr.flush()


# KIND -> bytes written in place of the answer (`ok` is the plain answer's line, `rid` the request's id); a callable
# returning None has done what it does (exit, stall) itself.
GARBAGE: dict[str, Any] = {
    "not_json": lambda rid, ok: b"this is not json\n" + ok,
    "invalid_utf8_line": lambda rid, ok: b"\xff\xfe{\"jsonrpc\": \"2.0\"}\n" + ok,
    "invalid_utf8_answer": lambda rid, ok: ok.replace(b'"ok"', b'"\xff\xfe"'),
    "array": lambda rid, ok: b"[1, 2, 3]\n" + ok,
    "number": lambda rid, ok: b"42\n" + ok,
    "string": lambda rid, ok: b'"a string"\n' + ok,
    "null": lambda rid, ok: b"null\n" + ok,
    "wrong_version": lambda rid, ok: ok.replace(b'"2.0"', b'"1.0"'),
    "no_version": lambda rid, ok: ok.replace(b'"jsonrpc": "2.0", ', b""),
    "unknown_id": lambda rid, ok: answer(987654, {}) + answer("x", {}) + answer([rid], {}) + ok,
    "result_and_error": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "result": {},
                                              "error": {"code": -1, "message": "m"}}),
    "error_not_object": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "error": "broken"}),
    "error_no_code": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "error": {"message": "no code"}}),
    "error_code_string": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "error": {"code": "-1", "message": "m"}}),
    "error_code_float": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "error": {"code": 1.5, "message": "m"}}),
    "error_no_message": lambda rid, ok: line({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000}}),
    "infinity": lambda rid, ok: b'{"jsonrpc": "2.0", "id": %s, "result": {"x": Infinity}}\n' % json.dumps(rid).encode(),
    "several_mib": lambda rid, ok: ok.replace(b'"ok"', b'"' + b"z" * (6 * MIB) + b'"'),
    "no_newline_eof": lambda rid, ok: (write(ok.rstrip(b"\n")), os._exit(0)),
    "partial_stall": lambda rid, ok: (write(ok[:20]), stall()),
    "bom": lambda rid, ok: b"\xef\xbb\xbf" + ok,
    "crlf": lambda rid, ok: ok.replace(b"\n", b"\r\n"),
    "stdout_closed": lambda rid, ok: (os.close(1), stall()),
    "exit_0": lambda rid, ok: os._exit(0),
    "exit_1": lambda rid, ok: os._exit(1),
    "exit_2": lambda rid, ok: os._exit(2),
    "exit_255": lambda rid, ok: os._exit(255),
    "sigkill": lambda rid, ok: os.kill(os.getpid(), signal.SIGKILL),
    "sigsegv": lambda rid, ok: (signal.signal(signal.SIGSEGV, signal.SIG_DFL), os.kill(os.getpid(), signal.SIGSEGV)),
    "stderr_flood_lines": lambda rid, ok: (stderr_flood(True), write(ok)),
    "stderr_flood_one_line": lambda rid, ok: (stderr_flood(False), write(ok)),
    "method_list": lambda rid, ok: line({"jsonrpc": "2.0", "method": ["notifications/message"]}) + ok,
    "method_object": lambda rid, ok: line({"jsonrpc": "2.0", "method": {"a": 1}}) + ok,
    "method_number": lambda rid, ok: line({"jsonrpc": "2.0", "method": 5}) + ok,
    "method_null": lambda rid, ok: line({"jsonrpc": "2.0", "method": None}) + ok,
    "request_method_list": lambda rid, ok: line({"jsonrpc": "2.0", "id": 70, "method": ["roots/list"]}) + ok,
    "request_method_number": lambda rid, ok: line({"jsonrpc": "2.0", "id": 71, "method": 5}) + ok,
    "request_id_object": lambda rid, ok: line({"jsonrpc": "2.0", "id": {"a": [1]}, "method": "ping"}) + ok,
}
INIT_RESULT = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
               "serverInfo": {"name": "garbage", "version": "1"}}


def result_for(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        return {**INIT_RESULT, "protocolVersion": params.get("protocolVersion", "2025-06-18")}
    if method == "tools/list":
        return {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "garbage", "ask")]}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": "ok"}]}
    if method == "resources/read":
        return {"contents": [{"uri": params.get("uri"), "text": "ok"}]}
    if method == "prompts/list":  # listed: else the gateway answers unknown_prompt and never asks for it
        return {"prompts": [{"name": "garbage"}]}
    if method == "prompts/get":
        return {"messages": [{"role": "user", "content": {"type": "text", "text": "ok"}}]}
    return {}


def key_of(message: dict[str, Any]) -> str | None:
    method, params = message.get("method"), message.get("params") or {}
    if method == "notifications/roots/list_changed":
        return "notification"
    if "method" not in message:
        return "answer"
    if method in ("initialize", "tools/list"):
        return str(method)
    if params.get("name") == "garbage" or params.get("uri") == "file:///garbage":
        return str(method)
    return None


def main() -> None:
    kind, key, mark = sys.argv[1:4]
    asked: dict[Any, Any] = {}  # roots/list id -> the tools/call id it was asked for
    for raw in sys.stdin.buffer:
        message = json.loads(raw)
        rid, method = message.get("id"), message.get("method")
        if method == "tools/call" and (message.get("params") or {}).get("name") == "ask":
            asked[f"roots-{rid}"] = rid
            write(line({"jsonrpc": "2.0", "id": f"roots-{rid}", "method": "roots/list"}))
            continue
        if rid in (70, 71) and method is None:  # the gateway's answer to a request whose method is no string
            sys.stderr.write(f"answered {json.dumps(message.get('error'))}\n")
            sys.stderr.flush()
            continue
        call = asked.pop(rid, None) if method is None else None
        ok = answer(call if call is not None else rid, result_for(method or "tools/call", message.get("params") or {}))
        if key_of(message) == key and not os.path.exists(mark):
            open(mark, "w").close()
            data = GARBAGE[kind](call if call is not None else rid, ok)
            if isinstance(data, bytes):
                write(data)
            continue
        if rid is not None and (method is not None or call is not None):
            write(ok)


if __name__ == "__main__":
    main()
