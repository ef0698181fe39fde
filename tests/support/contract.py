"""Helpers of tests/e2e/test_interfaces_contract.py, the literal reading of the pinned interfaces page: its Config
example, a raw MCP agent (JSON answers, so held calls answer at once), the approvers' and upstreams' HTTP API, a
webhook receiver and a gateway served from a config file as a user runs it."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.processes import stop_async
from tests.support.servers import SeenRequest, run_aiohttp
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://acme.test/agent/shopper"
APPROVAL_FIELDS = {"id", "state", "upstream", "tool", "principal", "chain", "tenant", "args", "args_digest",
                   "policies", "created_at", "expires_at", "decided_by", "comment"}
INITIALIZE = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "contract", "version": "1"}}
STATES = {"pending", "approved", "denied", "expired", "cancelled", "abandoned"}
# A policy set for the error checks: everything allowed, except payments/balance (denied) and payments/pay
# (held for a person).
CONTRACT_POLICIES = """
@id("allow-most")
permit (principal, action, resource) unless { resource == Tool::"payments/pay" };

@id("pay-after-approval")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/pay")
when { context.approval == "granted" };

@id("balance-denied")
forbid (principal, action == Action::"call_tool", resource == Tool::"payments/balance");
"""


# The Config example of the interfaces page, verbatim.
CONTRACT_EXAMPLE = """\
listen: {host: 127.0.0.1, port: 8700, public_url: http://127.0.0.1:8700, allowed_origins: [], allowed_hosts: [], max_body_bytes: 1048576}
# allowed_hosts empty = the host of public_url plus localhost/127.0.0.1; any other Host header → 403 (DNS rebinding)
upstreams:
  - name: payments                    # [a-z0-9_-]+
    url: http://127.0.0.1:9002/mcp    # or command: [...] for stdio; transport: sse for legacy SSE
    timeout_s: 30
    tools: {pay: {sensitivity: confidential, read_only: false}}   # overrides of annotations / labels
    credentials: {mode: minted, ttl_s: 60, audience: http://127.0.0.1:9002/mcp, narrow_to_args: [account]}
identity:
  mode: jwt                           # or anonymous (local use only)
  issuers:
    - issuer: https://idp.example
      audience: http://127.0.0.1:8700/mcp
      jwks_file: jwks.json                 # or jwks_url
      algorithms: [RS256, ES256, EdDSA]
      claims: {tenant: tenant, owner: owner, groups: groups}   # principal attribute ← claim; these three,
                                           # plus environment and clearance, map from same-named claims by default
  clock_skew_s: 30
policies: {dir: policies/, shadow_dir: null}
approvals: {ttl_s: 900, webhooks: [{url: ..., secret: ${WEBHOOK_SECRET}}]}
store: memory                         # or {redis: {url: redis://127.0.0.1:6379/0}}
decision_log: {path: decisions.jsonl} # default: stdout
telemetry: {service_name: customs, traces: {endpoint: http://127.0.0.1:4318}, metrics: {prometheus: true}}
"""  # noqa: E501


def contract_example(**replace: int | str) -> str:
    """The Config example, comments stripped, its ports and `...` replaced (keys: the text to replace)."""
    text = re.sub(r"(^|\s+)#.*$", "", CONTRACT_EXAMPLE, flags=re.M)
    text = "\n".join(line for line in text.splitlines() if line.strip()) + "\n"
    for old, new in replace.items():
        text = text.replace(old, str(new))
    return text


def hours_and_weekdays() -> tuple[set[int], set[int]]:
    """UTC hour and ISO weekday (1 = Monday … 7) now and a minute on: a test using them is over within that minute."""
    times = [dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)]
    return {t.hour for t in times}, {t.isoweekday() for t in times}


def any_of(expression: str, values: set[int]) -> str:
    """A Cedar condition: `expression` equals one of `values`."""
    return "(" + " || ".join(f"{expression} == {value}" for value in sorted(values)) + ")"


def write_policies(directory: Path, body: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if body is None:
        for src in (REPO / "policies").glob("*.ceda*"):
            shutil.copy(src, directory / src.name)
    else:
        shutil.copy(REPO / "policies" / "schema.cedarschema", directory / "schema.cedarschema")
        (directory / "contract.cedar").write_text(body)
    return directory


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while not (result := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling a real component's state, bounded by the deadline
    return result


def reason(body: dict[str, Any]) -> str | None:
    return ((body.get("error") or {}).get("data") or {}).get("reason")


class Agent:
    """A raw MCP client (protocol 2025-06-18, Accept: application/json: held calls answer at once)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token
        self.sid: str | None = None
        self.ids = itertools.count(1)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.sid:
            headers["Mcp-Session-Id"] = self.sid
            headers["MCP-Protocol-Version"] = "2025-06-18"
        return {**headers, **(extra or {})}

    async def send(self, body: dict[str, Any], extra: dict[str, str] | None = None,
                   ) -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(self.url, json=body, headers=self.headers(extra)) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else {}), resp.headers

    async def open(self) -> Agent:
        status, body, headers = await self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                 "params": INITIALIZE})
        assert status == 200 and "result" in body, (status, body)
        self.sid = headers["Mcp-Session-Id"]
        assert (await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"}))[0] == 202
        return self

    async def call(self, name: str, args: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        return await self.send({"jsonrpc": "2.0", "id": next(self.ids), "method": "tools/call",
                                "params": {"name": name, "arguments": args}})


class Api:
    """The approvers' and upstreams' HTTP API of one gateway."""

    def __init__(self, http: aiohttp.ClientSession, url: str, issuer: TestIssuer) -> None:
        self.http, self.url, self.issuer = http, url, issuer

    def person(self, sub: str, *groups: str) -> str:
        return self.issuer.mint(sub, aud=f"{self.url}/mcp", groups=list(groups))

    async def request(self, method: str, path: str, token: str | None = None, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, f"{self.url}{path}", json=body, headers=all_headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def introspect(self, token: str) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/oauth/introspect", data={"token": token}) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def approval(self, approval_id: str, token: str) -> dict[str, Any]:
        status, item = await self.request("GET", f"/api/approvals/{approval_id}", token)
        assert status == 200, item
        return dict(item)


def minted(seen: list[SeenRequest], after: int = 0) -> str:
    tokens = [r.headers["authorization"].split(" ", 1)[1] for r in seen[after:] if "authorization" in r.headers]
    assert tokens, "the upstream got no credential"
    return tokens[-1]



@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with run_aiohttp(app) as url:
        yield f"{url}/hook", received


@asynccontextmanager
async def serve_file(config: Path, env: dict[str, str]) -> AsyncIterator[subprocess.Popen[str]]:
    log = config.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config.name], cwd=config.parent,
                                stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    try:
        async def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            return "listening on" in log.read_text()
        await until(listening, f"the gateway to listen:\n{log.read_text()}", within=30)
        yield proc
    finally:
        await stop_async(proc)


async def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def inactive(api: Api, token: str) -> bool:
    return (await api.introspect(token)) == {"active": False}


async def first(items: list[Any]) -> Any:
    return items[0] if items else None


async def decision_on_stdout(log: str) -> bool:
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("tool") == "balance":
            return True
    return False
