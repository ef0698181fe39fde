"""A stdio MCP child that exits while the gateway is still writing a large tools/call to it (test_stdio_exit_mid_write).

Run as `python stdio_exit_mid_write_child.py MARK`. It answers initialize and tools/call 'echo' normally. The first
tools/call 'big' it sees (MARK absent) makes it create MARK and exit at once, having read only the first chunk of that
request: the rest (megabytes) is still in the gateway's pipe or not yet written. A restarted child (MARK present)
answers every call.
"""

from __future__ import annotations

import json
import os
import sys

MARK = sys.argv[1]


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    pending = b""
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            return
        if b'"big"' in chunk and b"tools/call" in chunk and not os.path.exists(MARK):
            open(MARK, "w").close()
            os._exit(3)  # mid-request: the gateway is blocked writing the rest of it
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            answer(json.loads(line))


def answer(req: dict[str, object]) -> None:
    if "id" not in req or "method" not in req:
        return
    if req["method"] == "initialize":
        result: dict[str, object] = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                     "serverInfo": {"name": "exit-mid-write", "version": "1"}}
    elif req["method"] == "tools/call":
        params: dict[str, object] = req.get("params") or {}  # type: ignore[assignment]
        size = len(json.dumps(params))
        result = {"content": [{"type": "text", "text": f"{params.get('name')} {size}"}]}
    else:
        result = {}
    send({"jsonrpc": "2.0", "id": req["id"], "result": result})


if __name__ == "__main__":
    main()
