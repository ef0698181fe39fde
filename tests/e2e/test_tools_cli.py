"""`customs tools list|approve` as a child process against a real gateway: output, exit codes, hints."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_tool_pinning import Env, make_env, tool

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path, permissive_policies: Path) -> AsyncIterator[Env]:
    async for value in make_env(start_gateway, tmp_path, permissive_policies, "tofu"):
        yield value


async def _cli(*argv: str, token: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMS_TOKEN", "CUSTOMS_URL")}
    if token is not None:
        env["CUSTOMS_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "tools", *argv, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_and_refusals_name_the_problem(env: Env) -> None:
    assert "infra__deploy" in await env.names()  # the first listing pins the tools
    admin = env.token("carol", groups=["admins"])
    code, out, _ = await _cli("list", "--url", env.gw.url, token=admin)
    assert code == 0 and "infra/deploy\tpinned\tsha256:" in out
    code, _, err = await _cli("list", "--url", env.gw.url)
    assert code == 2 and "no token" in err and "CUSTOMS_TOKEN" in err
    code, _, err = await _cli("list", "--url", env.gw.url, token=env.token("carol", groups=["finance"]))
    assert code == 1 and "403" in err and "admin_group" in err
    code, _, err = await _cli("approve", "nosuch", "deploy", "--url", env.gw.url, token=admin)
    assert code == 1 and "404 unknown_tool" in err and "customs tools list" in err and "Traceback" not in err
    code, _, err = await _cli("approve", "infra", "nosuch", "--url", env.gw.url, token=admin)
    assert code == 1 and "404 unknown_tool" in err


async def test_bad_or_unreachable_url_is_an_error_not_a_traceback() -> None:
    code, _, err = await _cli("list", "--url", "127.0.0.1:8700", token="t")
    assert code == 2 and "not an http(s) URL" in err and "Traceback" not in err
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code, _, err = await _cli("list", "--url", f"http://127.0.0.1:{port}", token="t")
    assert code == 3 and "cannot reach the gateway" in err and "Traceback" not in err


async def test_list_shows_what_a_quarantined_tool_serves_and_no_python_none(start_gateway: Any, tmp_path: Path,
                                                                            permissive_policies: Path) -> None:
    """A tool never pinned (strict mode) has no hash: the row said `None`, and no row showed the definition served
    now, the one `tools approve --hash` accepts; both rows now end with it."""
    async for env in make_env(start_gateway, tmp_path, permissive_policies, "strict"):
        assert "infra__deploy" not in await env.names()  # new: quarantined, awaiting approval
        admin = env.token("carol", groups=["admins"])
        code, out, _ = await _cli("list", "--url", env.gw.url, token=admin)
        seen = (await env.record("deploy"))["seen"]
        assert code == 0 and "None" not in out, out
        assert f"infra/deploy\tquarantined\t-\tnew tool awaiting approval\tseen {seen}\n" in out, out
        assert (await _cli("approve", "infra", "deploy", "--hash", seen, "--url", env.gw.url, token=admin))[0] == 0
        env.tools["deploy"] = tool("deploy", destructive=True)  # the rug pull: quarantined beside its pin
        assert "infra__deploy" not in await env.names()
        record = await env.record("deploy")
        code, out, _ = await _cli("list", "--url", env.gw.url, token=admin)
        assert code == 0 and f"infra/deploy\tquarantined\t{seen}\t{record['reason']}\tseen {record['seen']}\n" in out
