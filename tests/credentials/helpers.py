"""Helpers for credential tests: a settable clock, configs, a principal with a delegation chain, call contexts,
a plain payments upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from gateway.config import Config, parse_config
from gateway.context import Actor, CallContext, Principal, ToolInfo


class Clock:
    """A settable wall clock for TTL and idle tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp_path: Path, upstreams: list[dict[str, Any]], *, port: int = 8700, public_url: str | None = None,
                **extra: Any) -> Config:
    data = {"listen": {"host": "127.0.0.1", "port": port, "public_url": public_url or f"http://127.0.0.1:{port}"},
            "upstreams": upstreams, "signing": {"key_dir": str(tmp_path / "keys")}, **extra}
    return parse_config(data)


def agent(token: str | None = "agent-token", *, sub: str = "spiffe://acme/agent-1",
          expires_at: float | None = None) -> Principal:
    return Principal(id=sub, issuer="https://idp.test", subject=sub, attributes={"tenant": "acme"},
                     chain=(Actor("spiffe://acme/orchestrator"), Actor("user:alice")), token=token,
                     expires_at=expires_at)


def call(upstream: str, tool: str, args: dict[str, Any] | None = None, *, principal: Principal | None = None,
         session_id: str | None = "sess-1", meta: dict[str, Any] | None = None) -> CallContext:
    params: dict[str, Any] = {"name": tool, "arguments": args or {}}
    if meta is not None:
        params["_meta"] = meta
    return CallContext(method="tools/call", request_id=1, params=params, principal=principal or agent(),
                       upstream=upstream, tool=ToolInfo(upstream=upstream, name=tool), session_id=session_id)


def payments_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("payments")

    @server.tool()
    def pay(account: str, amount: int) -> str:
        """Pay `amount` to `account`."""
        return f"paid {amount} to {account}"

    return server
