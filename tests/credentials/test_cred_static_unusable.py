"""A static credential no HTTP header can carry: a value with a line break or control character, a file that is not
UTF-8 text. Calls to that upstream answer `credential_unavailable` and the log names the file or variable, as for a
missing value; the gateway starts.

The value with a line break used to reach aiohttp, which refused to send it ("Forbidden control character detected
in headers"): every call answered internal_error, logged at ERROR. A file that is not UTF-8 stopped the gateway at
start with a UnicodeDecodeError, whose repr holds the file's bytes (the secret).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.credentials.helpers import payments_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

SECRET = "s3cr3t-0xC0FFEE"


async def test_a_static_value_no_header_can_carry_is_credential_unavailable(
        start_gateway: Callable[[dict[str, Any]], Awaitable[Any]], permissive_policies: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "two-lines").write_text(f"{SECRET}\nsecond-line\n")
    (tmp_path / "binary").write_bytes(SECRET.encode() + b"\xff\xfe")
    monkeypatch.setenv("CUSTOMS_TEST_CR_KEY", f"{SECRET}\r\nX-Injected: 1")
    sources = {"lines": {"value_file": str(tmp_path / "two-lines")}, "binary": {"value_file": str(tmp_path / "binary")},
               "env": {"value_env": "CUSTOMS_TEST_CR_KEY"}}
    async with run_http_server(payments_server()) as upstream:
        with caplog.at_level(logging.WARNING):
            gw = await start_gateway({
                "upstreams": [{"name": name, "url": upstream,
                               "credentials": {"mode": "static", "header": "X-Api-Key", **source}}
                              for name, source in sources.items()],
                "policies": {"dir": str(permissive_policies)}})
            async with sdk_client(gw.mcp) as client:
                for name in sources:
                    with pytest.raises(MCPError) as refused:
                        await client.call_tool(f"{name}__pay", {"account": "a-1", "amount": 1})
                    assert refused.value.error.data == {"reason": "credential_unavailable"}, name
    logged = [r for r in caplog.records if r.name == "customs.credentials.static"]
    for what in ("two-lines", "binary", "CUSTOMS_TEST_CR_KEY"):
        assert any(what in r.getMessage() for r in logged), what
    assert not any(r.levelno >= logging.ERROR for r in caplog.records if r.name.startswith("customs"))
    assert all(SECRET not in r.getMessage() for r in caplog.records)
