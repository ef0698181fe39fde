"""End to end through a real gateway: the upstream sees only the minted credential, never the agent's header."""

from __future__ import annotations

from tests.credentials.upstream import JwksVerifier, bound_socket, guarded_payments, serve_upstream
from tests.support.mcp_client import sdk_client


async def test_gateway_attaches_minted_credential_only(start_gateway, permissive_policies, tmp_path) -> None:
    up_sock = bound_socket()
    upstream_url = f"http://127.0.0.1:{up_sock.getsockname()[1]}/mcp"
    verifier = JwksVerifier(issuer="http://gateway.pending", audience=upstream_url, introspect=True)
    async with serve_upstream(guarded_payments(verifier), up_sock):
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url,
                           "credentials": {"mode": "minted", "narrow_to_args": ["account"]}}],
            "policies": {"dir": str(permissive_policies)},
            "signing": {"key_dir": str(tmp_path / "keys")}})
        verifier.issuer = gw.url
        # The agent's own bearer value must never reach the upstream (anonymous identity ignores it here):
        # had it been forwarded, the verifier would have refused it and the call would have failed.
        async with sdk_client(gw.mcp, headers={"Authorization": "Bearer agent-own-token",
                                               "Cookie": "sid=agent"}) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 3})
            assert not result.is_error, result
        # Session set-up (initialize, tools/list) carries a task-bound token with no tool scope; the call
        # itself carries one narrowed to the tool and the account it touches.
        (claims,) = [c for c in verifier.accepted if c.get("scope") == "pay account:acme-1"]
        assert all(c["scope"] in ("", "pay account:acme-1") for c in verifier.accepted)
        assert all(c["iss"] == gw.url and c["aud"] == upstream_url for c in verifier.accepted)
        assert claims["iss"] == gw.url and claims["aud"] == upstream_url and claims["args"] == {"account": "acme-1"}
        assert verifier.rejections == []
