"""The checks of tests/e2e/test_interfaces_contract.py on the gateway served from the interfaces page's Config
example: the names of its two MCP endpoints, the minted credential and its introspection, the well-known documents,
the approvers' API, page and CLI, the operators' endpoints and the telemetry names."""

from __future__ import annotations

import hashlib
import hmac

import aiohttp
import jwt
import pytest

from tests.support.cli import customs_async
from tests.support.contract import APPROVAL_FIELDS, SHOPPER, Agent, Api, first, inactive, minted, reason, until
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import SeenRequest


async def check_spans(otlp: OtlpReceiver) -> None:
    """The telemetry names of the page on the server spans of an allowed call and a held one."""
    span = await otlp.wait_for_span(lambda s: s.name == "tools/call balance" and s.kind == "SERVER")
    assert span.resource["service.name"] == "customs"
    names = {"mcp.method.name", "mcp.session.id", "mcp.protocol.version", "jsonrpc.request.id", "gen_ai.tool.name",
             "customs.principal", "customs.decision", "customs.policy_ids", "customs.upstream",
             "customs.credential.mode"}
    assert names <= set(span.attributes), names - set(span.attributes)
    assert (span.attributes["mcp.method.name"], span.attributes["gen_ai.tool.name"]) == ("tools/call", "balance")
    assert (span.attributes["customs.decision"], span.attributes["customs.principal"]) == ("allow", SHOPPER)
    assert (span.attributes["customs.upstream"], span.attributes["customs.credential.mode"]) == ("payments", "minted")
    held = await otlp.wait_for_span(lambda s: s.name == "tools/call payments__pay" and s.kind == "SERVER"
                                    and s.attributes.get("customs.decision") == "approval_required")
    assert {"customs.approval.id", "customs.approval.outcome", "error.type"} <= set(held.attributes), held.attributes


async def check_names_and_credentials(api: Api, token: str, seen: list[SeenRequest], upstream: str) -> None:
    async with sdk_client(f"{api.url}/mcp", token) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"payments__pay", "payments__balance"} <= names, names
    async with sdk_client(f"{api.url}/mcp/payments", token) as client:
        assert {"pay", "balance"} <= {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("balance", {"account": "acme-1"})
        assert not result.is_error, result
        credential = minted(seen)
        claims = jwt.decode(credential, options={"verify_signature": False})
        assert claims["aud"] == upstream and claims["sub"] == SHOPPER and claims["iss"] == api.url, claims
        assert claims["exp"] - claims["iat"] == 60 and claims["args"] == {"account": "acme-1"}, claims  # ttl_s, narrow
        assert claims["scope"].split() == ["balance", "account:acme-1"], claims
        answer = await api.introspect(credential)
        assert answer["active"] is True and answer["client_id"] == SHOPPER, answer
    # The session's DELETE ends its task: the credential is revoked.
    assert await until(lambda: inactive(api, credential), "revocation at session end")


async def check_well_known(api: Api, credential: str) -> None:
    for path, resource in (("", "/mcp"), ("/mcp", "/mcp"), ("/mcp/payments", "/mcp/payments")):
        status, meta = await api.request("GET", f"/.well-known/oauth-protected-resource{path}")
        assert status == 200 and meta["resource"] == f"{api.url}{resource}", (path, status, meta)
        assert meta["authorization_servers"] == ["https://idp.example"], meta
    status, meta = await api.request("GET", "/.well-known/oauth-authorization-server")
    assert status == 200 and meta["issuer"] == api.url, meta
    assert meta["introspection_endpoint"] == f"{api.url}/oauth/introspect", meta
    async with api.http.get(meta["jwks_uri"]) as resp:
        keys = (await resp.json())["keys"]
    assert jwt.get_unverified_header(credential)["kid"] in {key["kid"] for key in keys}
    status, jwks = await api.request("GET", "/.well-known/jwks.json")
    assert status == 200 and jwks["keys"] == keys
    assert await api.introspect("not-a-token") == {"active": False}


async def check_approvals(api: Api, agent: Agent, hooks: list[tuple[bytes, dict[str, str]]]) -> None:
    await agent.open()
    alice, bob = api.person("alice", "approvers", "finance"), api.person("bob", "approvers")
    status, held, _ = await agent.call("payments__pay", {"account": "acme-9", "amount": 70})
    assert status == 200 and reason(held) == "approval_pending", held
    approval_id = held["error"]["data"]["approval_id"]
    status, listed = await api.request("GET", "/api/approvals?state=pending", alice)
    assert status == 200 and set(listed) == {"items"} and [i["id"] for i in listed["items"]] == [approval_id]
    item = listed["items"][0]
    assert APPROVAL_FIELDS <= set(item), APPROVAL_FIELDS - set(item)
    assert item["state"] == "pending" and (item["upstream"], item["tool"], item["principal"]) == (
        "payments", "pay", SHOPPER) and item["chain"] == [] and item["tenant"] == "acme"
    assert item["args"] == {"account": "acme-9", "amount": 70} and item["args_digest"].startswith("sha256:")
    assert item["policies"] and item["decided_by"] is None and item["comment"] is None
    assert item["expires_at"] - item["created_at"] == pytest.approx(900, abs=1)
    assert await api.approval(approval_id, alice) == item
    async with api.http.get(f"{api.url}/approvals", headers={"Authorization": f"Bearer {alice}"}) as resp:
        assert resp.status == 200 and approval_id in await resp.text()  # the page takes the bearer token too
    body, headers = await until(lambda: first(hooks), "the webhook")
    signature = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Customs-Signature"] == f"sha256={signature}" and approval_id in body.decode()
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):  # RFC 7235: a 401 says how to authenticate
        async with api.http.get(f"{api.url}/api/approvals?state=pending", headers=headers) as resp:
            assert resp.status == 401 and resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), resp.headers
            assert ('error="invalid_token"' in resp.headers["WWW-Authenticate"]) == bool(headers)
    for token in (agent.token, bob):  # nobody approves their own call; bob is not in finance
        status, _ = await api.request("POST", f"/api/approvals/{approval_id}/approve", token, {"comment": "x"})
        assert status == 403
    status, decided = await api.request("POST", f"/api/approvals/{approval_id}/approve", alice, {"comment": "ok"})
    assert status == 200 and APPROVAL_FIELDS <= set(decided) and decided["state"] == "approved", decided
    assert decided["decided_by"] == "alice" and decided["comment"] == "ok"
    status, late = await api.request("POST", f"/api/approvals/{approval_id}/deny", alice, {"comment": "no"})
    assert status == 409 and late["error"]["reason"] == "already_decided", late
    status, done, _ = await agent.call("payments__pay", {"account": "acme-9", "amount": 70})
    assert status == 200 and "result" in done, done
    await check_denied(api, agent, alice)


async def check_denied(api: Api, agent: Agent, approver: str) -> None:
    status, held, _ = await agent.call("payments__pay", {"account": "acme-9", "amount": 5})
    approval_id = held["error"]["data"]["approval_id"]
    code, out, err = await customs_async("approvals", "deny", approval_id, "--comment", "nope", "--url", api.url,
                                         token=approver)
    assert code == 0 and (await api.approval(approval_id, approver))["state"] == "denied", (out, err)
    code, out, err = await customs_async("approvals", "approve", approval_id, "--url", api.url, token=approver)
    assert code == 1 and "already_decided" in err, (code, out, err)
    code, out, err = await customs_async("approvals", "show", "apr_missing", "--url", api.url, token=approver)
    assert code == 1 and err.strip(), (code, out, err)
    code, out, err = await customs_async("approvals", "show", approval_id, "--url", api.url, token="not-a-jwt")
    assert code == 1 and "401" in err and "Traceback" not in err, (code, out, err)
    code, out, _ = await customs_async("approvals", "list", "--state", "all", "--url", api.url, token=approver)
    assert code == 0 and approval_id in out
    status, denied, _ = await agent.call("payments__pay", {"account": "acme-9", "amount": 5})
    assert status == 200 and reason(denied) == "approval_denied", denied
    assert denied["error"]["data"]["approval_id"] == approval_id and denied["error"]["data"]["comment"] == "nope"


async def check_operators(api: Api, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api.url}/approvals") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    assert (await api.request("GET", "/healthz"))[0] == 200
    status, ready = await api.request("GET", "/readyz")
    assert status == 200 and isinstance(ready["checks"], dict) and ready["checks"], ready
    status, metrics = await api.request("GET", "/metrics")
    assert status == 200 and "mcp_server_operation_duration" in metrics and "customs_calls" in metrics
    status, refused = await api.request("POST", "/mcp", body={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                        headers={"Host": "evil.example"})
    assert status == 403 and reason(refused) == "host_forbidden", refused
    status, refused = await api.request("POST", "/mcp", body={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                        headers={"Origin": "http://evil.example"})
    assert status == 403 and reason(refused) == "origin_forbidden", refused
    status, own = await api.request("POST", "/mcp", api.person("dave"), {"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                    headers={"Origin": api.url})
    assert status != 403, own  # public_url's own origin is allowed
    big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 1_100_000}}
    status, refused = await api.request("POST", "/mcp", api.person("dave"), big)
    assert status == 413 and reason(refused) == "body_too_large", refused
