"""docs/approvals.openapi.yaml names every status each approvals endpoint answers (docs/approvals.md, Errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

SPEC = Path(__file__).resolve().parents[2] / "docs" / "approvals.openapi.yaml"

# What the handlers in gateway/approvals/web.py answer: 401 without a usable token, 403 for a token of another
# issuer than approvals.approvers_issuer (any endpoint) or a refused person, 503 while the store or the policy
# engine cannot answer, 408 when a decision's body does not arrive within listen.body_timeout_s, 413 when it is
# over listen.max_body_bytes (docs/errors.md, body_too_large).
ANSWERS = {
    ("/api/approvals", "get"): {"200", "400", "401", "403", "503"},
    ("/api/approvals/{id}", "get"): {"200", "401", "403", "404", "503"},
    ("/api/approvals/{id}/approve", "post"): {"200", "400", "401", "403", "404", "408", "409", "413", "503"},
    ("/api/approvals/{id}/deny", "post"): {"200", "400", "401", "403", "404", "408", "409", "413", "503"},
    ("/api/approvals/events", "get"): {"200", "401", "403", "503"},
}


def test_every_answered_status_is_in_the_openapi_file() -> None:
    paths = yaml.safe_load(SPEC.read_text())["paths"]
    for (path, method), statuses in ANSWERS.items():
        assert set(paths[path][method]["responses"]) == statuses, f"{method.upper()} {path}"


async def test_the_event_stream_answers_503_while_the_store_holding_sign_outs_is_down(
        start_gateway: Any, tmp_path: Path, redis_factory: Any) -> None:
    """With `store: redis` whether the token was signed out is read from Redis when the stream opens: while Redis is
    down that cannot be known and the stream is refused 503 `approval_unavailable` (fail closed), as every other
    endpoint is; the OpenAPI file listed only 200, 401 and 403 for it."""
    from tests.approvals.test_signout_revokes import PUBLIC, _two_replicas

    issuer, server, (gateway, _) = await _two_replicas(start_gateway, tmp_path, redis_factory)
    token = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers"])
    server.kill()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{gateway.url}/api/approvals/events", headers=headers) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["reason"] == "approval_unavailable"
    responses = yaml.safe_load(SPEC.read_text())["paths"]["/api/approvals/events"]["get"]["responses"]
    assert "503" in responses


async def test_a_decision_body_over_the_limit_is_413_body_too_large(start_gateway: Any, tmp_path: Path) -> None:
    from tests.approvals.test_signout_revokes import _gateway_and_alice

    gateway, _, token = await _gateway_and_alice(start_gateway, tmp_path)
    body = b'{"comment": "' + b"x" * (gateway.config.listen.max_body_bytes + 1) + b'"}'
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/api/approvals/apr_{'0' * 32}/deny", data=body,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}) as resp:
            assert resp.status == 413 and (await resp.json())["error"]["reason"] == "body_too_large"
    for verb in ("approve", "deny"):
        assert "413" in yaml.safe_load(SPEC.read_text())["paths"][f"/api/approvals/{{id}}/{verb}"]["post"]["responses"]
