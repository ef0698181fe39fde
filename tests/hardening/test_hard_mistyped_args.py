"""Arguments whose run-time Cedar type is not the schema's, through a real gateway and the real engine.

Equality and set membership never error in Cedar, so a forbid written for the declared type
(`context.args.amounts.contains(5)` on a `Set<Long>`) was merely false on the Set of Strings that
`[5, 2.5]` becomes, and the call reached the upstream. The decision now denies such a call, with the
mismatch in the decision log, while well-typed calls are decided by the policies as before.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import REPO, RawClient, Recorder, reason, recording_server
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio

POLICIES = """
@id("transfers")
permit (principal, action == Action::"call_tool", resource == Tool::"rec/transfer");

@id("no-five")
forbid (principal, action == Action::"call_tool", resource)
when { context.args has amounts && context.args.amounts.contains(5) };

@id("blocked-account")
forbid (principal, action == Action::"call_tool", resource)
when { context.args has account && context.args.account == "666" };
"""


def policies(directory: Path) -> Path:
    directory.mkdir(parents=True)
    schema = (REPO / "policies" / "schema.cedarschema").read_text()
    schema = schema.replace('"amount"?: Long,', '"amount"?: Long,\n  "amounts"?: Set<Long>,')
    assert '"amounts"?: Set<Long>' in schema
    (directory / "schema.cedarschema").write_text(schema)
    (directory / "p.cedar").write_text(POLICIES)
    return directory


async def test_a_mistyped_argument_cannot_slip_past_a_forbid(start_gateway: Any, tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    recorder = Recorder()
    async with run_http_server(recording_server(recorder)) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "rec", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(policies(tmp_path / "policies")), "watch": False},
            "decision_log": {"path": str(log_path)},
        })
        client = RawClient(http, gw.mcp)
        await client.initialize()
        answers = {}
        for n, args in enumerate([{"amounts": [1, 2]}, {"account": "acme"},  # well typed: permitted
                                  {"amounts": [5]}, {"account": "666"},  # well typed: forbidden
                                  {"amounts": [5, 2.5]}, {"account": 666},  # mistyped: must not run
                                  {"amounts": [1, 2.5]}]):  # mistyped, no 5: still not what the schema says
            status, _, body = await client.call("rec__transfer", args, request_id=n + 1)
            assert status == 200, body
            answers[json.dumps(args)] = "ran" if "result" in body else reason(body)
        async with http.get(f"{gw.url}/metrics") as resp:  # counted as policy errors, not lost among denials
            counted = [line for line in (await resp.text()).splitlines() if line.startswith("customs_policy_errors")]
        assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) == 3.0, counted
        await asyncio.wait_for(gw.gateway.parts.observability.log.close(), 10)
    assert answers == {'{"amounts": [1, 2]}': "ran", '{"account": "acme"}': "ran",
                       '{"amounts": [5]}': "unknown_tool", '{"account": "666"}': "unknown_tool",
                       '{"amounts": [5, 2.5]}': "unknown_tool", '{"account": 666}': "unknown_tool",
                       '{"amounts": [1, 2.5]}': "unknown_tool"}
    assert recorder.calls == [("transfer", {"amounts": [1, 2]}), ("transfer", {"account": "acme"})]
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    errors = [r.get("policy_errors") for r in records if r.get("type") == "decision" and r["decision"] == "deny"]
    assert errors[:2] == [None, None]  # denied by the forbids themselves
    assert errors[2:] == [["argument type mismatch: context.args.amounts is Set<String>, the schema declares "
                           "Set<Long>"],
                          ["argument type mismatch: context.args.account is Long, the schema declares String"],
                          ["argument type mismatch: context.args.amounts is Set<String>, the schema declares "
                           "Set<Long>"]]
