"""A literal reading of the pinned external interfaces page (the contract the issues refine; its Config example is
copied verbatim into tests/support/contract.py): that example served as written, every HTTP path of its table, the
errors an agent sees, the Cedar names, the Redis store, the standard OTEL_* variables and every CLI command, each
against a real gateway and real upstreams. Checks on the example's gateway are in tests/support/contract_checks.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import payments_server
from tests.conftest import free_port
from tests.support.cli import customs, customs_main
from tests.support.contract import (
    CONTRACT_POLICIES,
    INITIALIZE,
    REPO,
    SHOPPER,
    Agent,
    Api,
    contract_example,
    decision_on_stdout,
    inactive,
    lines,
    minted,
    reason,
    serve_file,
    until,
    webhook_receiver,
    write_policies,
)
from tests.support.contract_checks import (
    check_approvals,
    check_names_and_credentials,
    check_operators,
    check_spans,
    check_well_known,
)
from tests.support.feature_server import feature_server
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.redis import RedisServer, redis_factory  # noqa: F401
from tests.support.servers import SeenRequest, run_http_server, run_sse_server, stdio_command
from tests.support.tokens import TestIssuer, act_chain

# -- the Config example, served as written, and the HTTP surface of the table ---------------------------


async def test_config_example_checks_serves_and_answers_every_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = TestIssuer(tmp_path, issuer="https://idp.example")
    shutil.copy(issuer.jwks_path, tmp_path / "jwks.json")
    write_policies(tmp_path / "policies")
    port, seen = free_port(), list[SeenRequest]()
    async with (run_http_server(payments_server(), requests=seen) as upstream, webhook_receiver() as (hook, hooks),
                OtlpReceiver() as otlp, aiohttp.ClientSession() as http):
        upstream_port = upstream.split(":")[2].split("/")[0]
        config = tmp_path / "customs.yaml"
        replace: dict[str, int | str] = {"8700": port, "9002": upstream_port, "4318": otlp.url.rsplit(":", 1)[1],
                                         "...": hook}
        config.write_text(contract_example(**replace))
        monkeypatch.setenv("WEBHOOK_SECRET", "s3cret")
        checked = customs_main("config", "check", str(config))
        assert checked.returncode == 0 and "OK" in checked.stdout, checked
        async with serve_file(config, {"WEBHOOK_SECRET": "s3cret"}):
            api = Api(http, f"http://127.0.0.1:{port}", issuer)
            agent_token = issuer.mint(SHOPPER, aud=f"{api.url}/mcp", tenant="acme")
            await check_names_and_credentials(api, agent_token, seen, upstream)
            for alg in ("ES256", "EdDSA"):  # algorithms: [RS256, ES256, EdDSA]
                await Agent(http, f"{api.url}/mcp", issuer.mint(SHOPPER, aud=f"{api.url}/mcp", alg=alg)).open()
            await check_well_known(api, minted(seen))
            await check_approvals(api, Agent(http, f"{api.url}/mcp", agent_token), hooks)
            await check_operators(api, http)
            await check_spans(otlp)
            assert await until(lambda: lines(tmp_path / "decisions.jsonl"), "the decision log")
    # The policy commands on what the example ran with: its policies and its decision log.
    policies = str(tmp_path / "policies")
    assert customs_main("policy", "validate", policies).returncode == 0
    replayed = customs_main("policy", "replay", "--log", str(tmp_path / "decisions.jsonl"), "--policies", policies)
    assert replayed.returncode == 0 and " 0 changed" in replayed.stdout + replayed.stderr, replayed
    explained = customs_main("policy", "explain", "--policies", policies, "--tool", "payments/balance",
                             "--principal-claims", json.dumps({"sub": SHOPPER, "tenant": "acme"}),
                             "--annotations", json.dumps({"read_only": True}), "--args", '{"account": "acme-1"}')
    assert explained.returncode == 0 and "allow" in explained.stdout, explained


# -- the errors an agent sees ----------------------------------------------------------------------------


async def test_errors_an_agent_sees(start_gateway: Any, tmp_path: Path) -> None:
    issuer, features = TestIssuer(tmp_path), feature_server()[0]
    seen: list[SeenRequest] = []
    async with (run_http_server(payments_server(), requests=seen) as pay_url, run_http_server(features) as feat_url,
                run_sse_server(payments_server()) as sse_url, aiohttp.ClientSession() as http):
        upstreams = [{"name": "payments", "url": pay_url, "credentials": {"mode": "minted", "ttl_s": 2}},
                     {"name": "feat", "url": feat_url, "timeout_s": 0.5},
                     {"name": "dead", "url": f"http://127.0.0.1:{free_port()}/mcp"},
                     {"name": "legacy", "url": sse_url, "transport": "sse"},  # the page's other two transports
                     {"name": "child", "command": stdio_command("payments")}]
        gw = await start_gateway({"upstreams": upstreams, "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES))},
                                  "approvals": {"ttl_s": 2}})
        api = Api(http, gw.url, issuer)

        def agent(name: str, path: str = "/mcp") -> Agent:
            return Agent(http, f"{gw.url}{path}", issuer.mint(f"spiffe://acme.test/agent/{name}", aud=gw.mcp))

        status, body, headers = await Agent(http, gw.mcp, None).call("payments__balance", {"account": "a"})
        assert status == 401 and reason(body) == "unauthenticated", body
        assert headers["WWW-Authenticate"].startswith("Bearer resource_metadata=")
        for age, wanted in ((20, 200), (100, 401)):  # identity.clock_skew_s defaults to 30
            late = issuer.mint(SHOPPER, aud=gw.mcp, exp=time.time() - age, iat=time.time() - 300)
            status, body, _ = await Agent(http, gw.mcp, late).send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                                     "params": INITIALIZE})
            assert status == wanted, (age, body)
        await check_denied_looks_unknown(agent("prober").open, agent("prober", "/mcp/payments").open)
        one = await agent("one").open()
        for name, expected in (("dead__anything", "upstream_unavailable"), ("feat__hang", "upstream_timeout")):
            status, body, _ = await one.call(name, {})
            assert status == 200 and reason(body) == expected, (name, body)
        for name in ("legacy__executed_calls", "child__executed_calls"):
            status, body, _ = await one.call(name, {})
            assert status == 200 and "result" in body, (name, body)
        await check_held_outcomes(api, await agent("two").open())
        await check_sdk_errors(gw.mcp, issuer.mint("spiffe://acme.test/agent/sdk", aud=gw.mcp))
        for path in ("/mcp", "/mcp/payments"):
            await check_session_verbs(await agent("three", path).open())
        status, body, _ = await agent("four", "/mcp/nope").send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert status == 404 and reason(body) == "unknown_upstream", body
        # Published for any name, configured or not, so that it tells no upstream names apart.
        status, meta = await api.request("GET", "/.well-known/oauth-protected-resource/mcp/nope")
        assert status == 200 and meta["resource"] == f"{gw.mcp}/nope", meta
        status, _ = await api.request("GET", "/healthz", headers={"Host": f"localhost:{gw.url.rsplit(':', 1)[1]}"})
        assert status == 200
        before = len(seen)
        status, body, _ = await one.call("payments__executed_calls", {})
        assert status == 200 and "result" in body, body
        credential = minted(seen, before)
        assert (await api.introspect(credential))["active"] is True
        assert await until(lambda: inactive(api, credential), "the credential's expiry")


async def check_sdk_errors(url: str, token: str) -> None:
    """The same reasons reach an MCP SDK client as MCPError data, in a session and stateless (2026-07-28)."""
    for mode in ("legacy", "auto"):
        async with sdk_client(url, token, mode=mode) as client:
            for name, args, expected in (("payments__balance", {"account": "a"}, "unknown_tool"),
                                         ("dead__anything", {}, "upstream_unavailable")):
                with pytest.raises(MCPError) as info:
                    await client.call_tool(name, args)
                assert info.value.error.data["reason"] == expected, (mode, name, info.value.error)
    async with sdk_client(url, token, mode="auto") as client:  # stateless: a held call answers at once
        with pytest.raises(MCPError) as info:
            await client.call_tool("payments__pay", {"account": "acme-1", "amount": 9})
        assert info.value.error.data["reason"] == "approval_pending" and info.value.error.data["approval_id"]


async def check_session_verbs(agent: Agent) -> None:
    """GET opens the session's stream; DELETE ends the session, which is then unknown."""
    headers = agent.headers({"Accept": "text/event-stream"})
    async with agent.http.get(agent.url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
    async with agent.http.delete(agent.url, headers=agent.headers()) as resp:
        assert resp.status in (200, 204), resp.status
    status, body, _ = await agent.call("feat__echo", {"value": "x"})
    assert status == 404 and reason(body) == "session_not_found", body


async def check_denied_looks_unknown(*opens: Callable[[], Awaitable[Agent]]) -> None:
    for open_agent, prefix in zip(opens, ("payments__", ""), strict=True):
        agent = await open_agent()
        _, denied, _ = await agent.call(f"{prefix}balance", {"account": "a"})
        _, unknown, _ = await agent.call(f"{prefix}no_such_tool", {})
        assert reason(denied) == "unknown_tool" and denied["error"]["message"] == f"Unknown tool: {prefix}balance"
        unknown["error"]["message"] = unknown["error"]["message"].replace("no_such_tool", "balance")
        assert {**denied, "id": 0} == {**unknown, "id": 0}, (denied, unknown)


async def check_held_outcomes(api: Api, agent: Agent) -> None:
    alice = api.person("alice", "approvers")
    status, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 1})
    assert status == 200 and reason(held) == "approval_pending", held
    approval_id = held["error"]["data"]["approval_id"]
    assert isinstance(approval_id, str) and approval_id
    status, _ = await api.request("POST", f"/api/approvals/{approval_id}/deny", alice, {"comment": "no"})
    assert status == 200
    status, denied, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 1})
    assert status == 200 and reason(denied) == "approval_denied", denied
    assert denied["error"]["data"]["approval_id"] == approval_id and denied["error"]["data"]["decided_by"] == "alice"
    assert denied["error"]["data"]["comment"] == "no"

    status, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 2, "password": "hunter2"})
    approval_id = held["error"]["data"]["approval_id"]
    args = (await api.approval(approval_id, alice))["args"]
    assert args["account"] == "acme-1" and "hunter2" not in json.dumps(args), args  # Approval.args is redacted

    async def expired() -> bool:
        return bool((await api.approval(approval_id, alice))["state"] == "expired")
    await until(expired, "the approval's expiry")
    status, late, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 2, "password": "hunter2"})
    assert status == 200 and reason(late) == "approval_expired", late
    assert late["error"]["data"]["approval_id"] == approval_id


async def test_rate_limited_is_http_429(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES))},
                                  "limits": {"per_principal": {"rate_per_s": 0.5, "burst": 2}}})
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp)).open()
        answers = [await agent.call("payments__executed_calls", {}) for _ in range(4)]
        status, body, headers = answers[-1]
        assert status == 429 and reason(body) == "rate_limited", answers
        assert int(headers["Retry-After"]) >= 1 and body["error"]["data"]["retry_after_s"] > 0


# -- store: {redis: {url: ...}}, and policy_unavailable when it is gone ----------------------------------


async def test_redis_store_then_policy_unavailable(start_gateway: Any, tmp_path: Path,
                                                   redis_factory: Callable[..., RedisServer],  # noqa: F811
                                                   ) -> None:
    redis_server = redis_factory()
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES))},
                                  "store": {"redis": {"url": redis_server.url}}})
        api = Api(http, gw.url, issuer)
        status, ready = await api.request("GET", "/readyz")
        assert status == 200 and ready["checks"]["store"]["ready"] is True, ready
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp)).open()
        _, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 3})
        approval_id = held["error"]["data"]["approval_id"]
        client = aioredis.from_url(redis_server.url)
        try:
            keys = [str(key) for key in await client.keys("*")]
        finally:
            await client.aclose()
        assert any(approval_id in key for key in keys), keys
        status, _ = await api.request("POST", f"/api/approvals/{approval_id}/approve",
                                      api.person("alice", "approvers"), {"comment": "ok"})
        assert status == 200
        status, done, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 3})
        assert "result" in done, done

        redis_server.kill()
        status, body, _ = await agent.send({"jsonrpc": "2.0", "id": 99, "method": "tools/list"})
        assert status == 200 and reason(body) == "policy_unavailable", body
        status, body, _ = await agent.call("payments__executed_calls", {})
        assert status == 200 and reason(body) == "policy_unavailable", body


# -- OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME when `telemetry` does not set them ------------------------


async def test_standard_otel_variables(spawn_gateway: Any, permissive_policies: Path) -> None:
    async with (OtlpReceiver() as otlp, OtlpReceiver() as traces, run_http_server(payments_server()) as pay_url):
        gw = await spawn_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "policies": {"dir": str(permissive_policies)},
                                  "telemetry": {"metrics": {"prometheus": True}}},  # sets neither: env applies
                                 env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_SERVICE_NAME": "contract-svc",
                                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.traces_url,
                                      "OTEL_EXPORTER_OTLP_HEADERS": "x-contract=yes",
                                      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                      "OTEL_METRIC_EXPORT_INTERVAL": "500"})
        async with sdk_client(gw.mcp) as client:
            await client.call_tool("payments__balance", {"account": "a"})
        span = await traces.wait_for_span(lambda s: s.name == "tools/call payments__balance" and s.kind == "SERVER")
        assert span.resource["service.name"] == "contract-svc", span.resource
        assert traces.requests[0].get("x-contract") == "yes", traces.requests[0]
        point = await otlp.wait_for_point(lambda p: p.metric == "mcp.server.operation.duration")
        assert point.count, point
        assert not otlp.spans  # the traces' own endpoint wins over the base one
        gw.proc.terminate()  # while the collectors still answer: the exporters flush at shutdown
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0
        # decision_log unset: its records go to stdout
        assert await until(lambda: decision_on_stdout(gw.log()), "a decision record on stdout")


# -- the CLI: every command has --help, and a failure exits non-zero with a message a person can act on -----

COMMANDS = [("serve",), ("demo",), ("config", "check"), ("policy", "validate"), ("policy", "test"),
            ("policy", "explain"), ("policy", "schema"), ("policy", "replay"), ("approvals", "list"),
            ("approvals", "show"), ("approvals", "approve"), ("approvals", "deny"), ("version",),
            (), ("config",), ("policy",), ("approvals",)]
FAILURES: list[tuple[tuple[str, ...], int, str]] = [
    (("config", "check", "/nonexistent/customs.yaml"), 2, "cannot read /nonexistent/customs.yaml"),
    (("policy", "validate", "/nonexistent"), 1, "/nonexistent: not a directory"),
    (("policy", "test", "/nonexistent/cases.yaml"), 2, "cannot read cases"),
    (("policy", "explain", "--policies", "/nonexistent", "--principal-claims", "{}", "--tool", "a/b"), 2,
     "not a directory"),
    (("policy", "schema", "--policies", str(REPO / "policies")), 2, "pass --config"),
    (("policy", "replay", "--log", "/nonexistent/d.jsonl", "--policies", str(REPO / "policies")), 2,
     "cannot read /nonexistent/d.jsonl"),
    (("approvals", "approve", "apr_x", "--url", "http://127.0.0.1:9"), 2, "pass --token or set CUSTOMS_TOKEN"),
    (("approvals", "deny", "apr_x", "--token", "t", "--timeout", "-1"), 2, "positive number"),
]


def test_every_command_has_help_and_fails_actionably(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUSTOMS_TOKEN", raising=False)
    monkeypatch.delenv("CUSTOMS_URL", raising=False)
    for command in COMMANDS:
        done = customs_main(*command, "--help")
        assert done.returncode == 0 and done.stdout.startswith(" ".join(("usage: customs", *command))), done
    version = customs("version")
    assert version.returncode == 0 and version.stdout.startswith("customs "), version
    for argv, code, message in FAILURES:
        done = customs_main(*argv)
        assert done.returncode == code and message in done.stderr + done.stdout, (argv, done)
    for argv, code, message in [(("serve", "--config", "/nonexistent/customs.yaml"), 2, "cannot read"),
                                (("demo", "--port", "70000"), 2, "must be 0-65535"),
                                (("approvals", "list", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t"),
                                 3, "hint: is `customs serve` running?")]:
        done = customs(*argv)
        assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr, (argv, done)


def test_policy_schema_refuses_a_policies_dir_that_is_not_there(tmp_path: Path) -> None:
    """`policy schema --policies DIR` with a DIR that does not exist (a typo) used to exit 0 and print, or with -o
    write over the real schema, the generated Args block alone; it is bad input (exit 2) and writes nothing."""
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"payments": {"tools": [{"name": "pay", "inputSchema": {"type": "object"}}]}}))
    schema = write_policies(tmp_path / "policies") / "schema.cedarschema"
    before = schema.read_text()
    for source in (("--policies", str(tmp_path / "polcies")), ("--config", str(_config_with_dir(tmp_path)))):
        done = customs_main("policy", "schema", "--tools-json", str(tools), *source, "-o", str(schema))
        assert done.returncode == 2 and f"{tmp_path / 'polcies'}: not a directory" in done.stderr, (source, done)
        assert schema.read_text() == before
    done = customs_main("policy", "schema", "--tools-json", str(tools), "--policies", str(tmp_path / "policies"))
    assert done.returncode == 0 and "entity Agent" in done.stdout and '"pay"' not in done.stderr, done


def test_config_check_names_both_store_shapes(tmp_path: Path) -> None:
    """`store: memory  # or {redis: {url: ...}}`: a `store: redis` used to be told only "Input should be 'memory'"."""
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: [{name: payments, url: http://127.0.0.1:9/mcp}]\nstore: redis\n")
    done = customs_main("config", "check", str(path))
    assert done.returncode == 2 and "store: must be memory or {redis: {url: redis://" in done.stdout + done.stderr, done


@pytest.mark.parametrize(("yaml_text", "problem"), [
    ("upstreams: {name: p, url: 'http://127.0.0.1:9/mcp'}", "upstreams: must be a list, not a mapping"),
    ("upstreams: [{name: p, command: python server.py}]", "upstreams[0].command: must be a list, not a string"),
    ("upstreams: []\npolicies: policies/", "policies: must be a mapping (key: value), not a string"),
    ("upstreams: []\npolicies:", "policies: must be a mapping (key: value), not empty"),
])
def test_config_check_names_yaml_shapes_not_python_types(tmp_path: Path, yaml_text: str, problem: str) -> None:
    """A list or mapping of the wrong shape used to be 'Input should be a valid tuple' or '... a valid dictionary or
    instance of PoliciesConfig': Python's words, not the YAML the person wrote."""
    path = tmp_path / "customs.yaml"
    path.write_text(yaml_text + "\n")
    done = customs_main("config", "check", str(path))
    assert done.returncode == 2 and f"  {problem}\n" in done.stdout + done.stderr, done


def _config_with_dir(tmp_path: Path) -> Path:
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: [{name: payments, url: http://127.0.0.1:9/mcp}]\n"
                    f"policies: {{dir: {tmp_path / 'polcies'}}}\n")
    return path


# -- the Cedar contract's names, as a policy writer uses them -------------------------------------------

CEDAR_NAMES = """
@id("list")
permit (principal, action == Action::"list_tools", resource);

@id("balance")
permit (principal in Tenant::"acme", action == Action::"call_tool", resource in Server::"payments")
when {
  resource == Tool::"payments/balance" && resource.read_only && !resource.destructive && !resource.open_world &&
  principal has clearance &&
  principal.clearance == "high" && context.tenant == "acme" && context.approval == "none" &&
  context.args has account && context.args.account == "acme-1" && !context.args_contain_secret &&
  context.chain_depth >= 0 && !context.chain.contains("spiffe://nobody") &&
  context.time.hour >= 0 && context.time.weekday >= 0 && context.environment == context.environment
};

@id("plain-sub")
permit (principal == Agent::"plain-sub", action == Action::"call_tool", resource == Tool::"payments/executed_calls");

@id("pay")
permit (principal in Tenant::"acme", action == Action::"call_tool", resource == Tool::"payments/pay")
when { resource.sensitivity == "confidential" && !resource.read_only && context.approval == "granted" };

@id("finance-approves")
permit (principal in Group::"finance", action == Action::"approve", resource)
when { resource.upstream == "payments" && resource.tool == "pay" && resource.requester == "%s" &&
       resource.args has account && !resource.chain.contains(resource.requester) };
"""


async def test_cedar_contract_names(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": pay_url,
                           "tools": {"pay": {"sensitivity": "confidential", "read_only": False}}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(claims={"tenant": "tenant", "owner": "owner",
                                                                           "groups": "groups"})]},
            "agents": {"spiffe://acme.test/agent/registered": {"tenant": "acme", "clearance": "high"}},
            "policies": {"dir": str(write_policies(tmp_path / "p", CEDAR_NAMES % SHOPPER))}})
        api = Api(http, gw.url, issuer)

        async def balance(account: str = "acme-1", clearance: str = "high", act: Any = None) -> str | None:
            token = issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme", act=act, claims={"clearance": clearance})
            _, body, _ = await (await Agent(http, gw.mcp, token).open()).call("payments__balance", {"account": account})
            return "ok" if "result" in body else reason(body)

        assert await balance() == "ok"
        for sub, expected in (("plain-sub", "result"), (SHOPPER, "error")):  # Agent::"<sub>" without SPIFFE too
            plain = await Agent(http, gw.mcp, issuer.mint(sub, aud=gw.mcp, tenant="acme")).open()
            assert expected in (await plain.call("payments__executed_calls", {}))[1]
        assert await balance(clearance="low") == "unknown_tool"
        assert await balance(account="acme-2") == "unknown_tool"
        planner = ("spiffe://acme.test/agent/planner", {"tenant": "acme", "clearance": "high"})
        assert await balance(act=act_chain(planner)) == "ok"  # an actor's attributes from its own act object
        assert await balance(act=act_chain("spiffe://acme.test/agent/registered")) == "ok"  # from `agents:`
        assert await balance(act=act_chain("spiffe://acme.test/agent/stranger")) == "unknown_tool"  # none: closed
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()
        _, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 4})
        approval_id = held["error"]["data"]["approval_id"]
        path = f"/api/approvals/{approval_id}/approve"
        assert (await api.request("POST", path, api.person("bob", "approvers"), {}))[0] == 403
        assert (await api.request("POST", path, api.person("carol", "finance"), {}))[0] == 200
        _, done, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": 4})
        assert "result" in done, done
        delegated = issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme", act=act_chain(planner))
        _, held, _ = await (await Agent(http, gw.mcp, delegated).open()).call("payments__pay", {"account": "acme-1"})
        item = await api.approval(held["error"]["data"]["approval_id"], api.person("carol", "finance"))
        assert (item["principal"], item["chain"]) == (SHOPPER, [planner[0]]), item
