"""What a real gateway's approvals API answers, validated against docs/approvals.openapi.yaml (its response schemas
for that path, method and status, as JSON Schema 2020-12, which OpenAPI 3.1 schemas are): every status an approver's
client can meet on the way (200 pending and decided, 400, 401, 403, 404, 409) in the documented shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.demo.servers import payments_server
from tests.support.contract import CONTRACT_POLICIES, SHOPPER, Agent, Api, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "approvals.openapi.yaml"
APPROVERS = """
@id("approvers-decide")
permit (principal in Group::"approvers", action == Action::"approve", resource);
"""
CONTRACT_ALL_BUT_APPROVE = CONTRACT_POLICIES.replace('permit (principal, action, resource) unless',
                                                     'permit (principal, action, resource) unless '
                                                     '{ action == Action::"approve" } unless')


class Spec:
    """The OpenAPI file's response schemas, `$ref`s resolved within it."""

    def __init__(self) -> None:
        self.doc = yaml.safe_load(SPEC_PATH.read_text())
        self.registry: Registry[Any] = Registry().with_resource("spec", Resource(self.doc, DRAFT202012))

    def check(self, path: str, method: str, status: int, body: Any) -> None:
        answer = self.doc["paths"][path][method]["responses"][str(status)]
        if "$ref" in answer:  # '#/components/responses/Error'
            answer = self.doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
        schema = answer["content"]["application/json"]["schema"]
        schema = {"$ref": f"spec#{schema['$ref'][1:]}"} if "$ref" in schema else self._rooted(schema)
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (method, path, status, errors, body)

    def _rooted(self, schema: Any) -> Any:
        """An inline schema whose `$ref`s point into the file: made to point at the registered resource."""
        if isinstance(schema, dict):
            return {k: (f"spec#{v[1:]}" if k == "$ref" else self._rooted(v)) for k, v in schema.items()}
        if isinstance(schema, list):
            return [self._rooted(v) for v in schema]
        return schema


async def test_every_answer_on_the_way_fits_the_openapi_file(start_gateway: Any, tmp_path: Path) -> None:
    spec, issuer = Spec(), TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay_url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "payments", "url": pay_url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p",
                                                                         CONTRACT_ALL_BUT_APPROVE + APPROVERS))}})
        api = Api(http, gw.url, issuer)
        alice, intern = api.person("alice", "approvers"), api.person("ivan", "interns")
        delegated = issuer.mint(SHOPPER, aud=gw.mcp, act=act_chain("spiffe://acme.test/agent/planner"))  # no tenant
        agent = await Agent(http, gw.mcp, delegated).open()
        ids = []
        for amount in (1, 2):
            _, held, _ = await agent.call("payments__pay", {"account": "acme-1", "amount": amount, "memo": "m"})
            ids.append(held["error"]["data"]["approval_id"])
        one = "/api/approvals/{id}"
        answers: list[tuple[str, str, str, str | None, Any, int]] = [
            ("/api/approvals", "get", "/api/approvals?state=pending", alice, None, 200),
            ("/api/approvals", "get", "/api/approvals?limit=1", alice, None, 200),  # with next_cursor
            ("/api/approvals", "get", "/api/approvals?state=nope", alice, None, 400),
            ("/api/approvals", "get", "/api/approvals", None, None, 401),
            (one, "get", f"/api/approvals/{ids[0]}", alice, None, 200),  # pending: tenant null, chain of one
            (one, "get", f"/api/approvals/{ids[0]}", intern, None, 403),
            (one, "get", "/api/approvals/apr_nope", alice, None, 404),
            (one + "/approve", "post", f"/api/approvals/{ids[0]}/approve", intern, {}, 403),
            (one + "/approve", "post", f"/api/approvals/{ids[0]}/approve", alice, {"comment": 5}, 400),
            (one + "/approve", "post", f"/api/approvals/{ids[0]}/approve", alice, {"comment": "ok"}, 200),
            (one + "/approve", "post", f"/api/approvals/{ids[0]}/approve", alice, None, 409),
            (one + "/deny", "post", f"/api/approvals/{ids[1]}/deny", alice, None, 200),  # no comment: null
            (one + "/deny", "post", f"/api/approvals/{ids[1]}/deny", alice, {"comment": "x"}, 409),
            (one + "/deny", "post", "/api/approvals/apr_nope/deny", alice, {}, 404),
            (one + "/deny", "post", f"/api/approvals/{ids[1]}/deny", None, {}, 401),
            ("/api/approvals", "get", "/api/approvals?state=approved,denied", alice, None, 200),
        ]
        for template, method, path, token, body, expected in answers:
            status, answer = await api.request(method.upper(), path, token, body)
            assert status == expected, (method, path, status, answer)
            spec.check(template, method, status, answer)
        _, listed = await api.request("GET", "/api/approvals?limit=1", alice)
        assert "next_cursor" in listed and len(listed["items"]) == 1, listed
