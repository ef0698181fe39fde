"""Fixtures for the approvals tests: both stores behind one parametrised fixture, a clock, call contexts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.model import Approval, binding_key, new_id
from gateway.approvals.redis import RedisApprovalStore
from gateway.context import Actor, CallContext, Decision, Principal, ToolInfo, args_digest
from tests.support.redis import RedisServer, redis_factory, redis_server

__all__ = ["redis_factory", "redis_server"]


@dataclass
class Clock:
    """A wall clock the test moves forward (expiry without waiting)."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class StoreKit:
    """How to make store instances ('replicas') of one kind sharing the same state."""

    kind: str
    make: Callable[..., Awaitable[Any]]
    redis: RedisServer | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest, clock: Clock,
              redis_factory: Callable[..., RedisServer]) -> AsyncIterator[StoreKit]:
    opened: list[Any] = []
    events: list[dict[str, Any]] = []
    if request.param == "memory":
        shared = MemoryApprovalStore(clock=clock, on_event=events.append)

        async def make_memory(**_: Any) -> Any:
            return shared  # one process: every 'replica' is the same store

        yield StoreKit("memory", make_memory, events=events)
        return
    server = redis_factory(appendonly=True)

    async def make_redis(**kwargs: Any) -> Any:
        store = RedisApprovalStore.from_url(server.url, "t:", clock=clock, on_event=events.append, **kwargs)
        await store.start()
        opened.append(store)
        return store

    yield StoreKit("redis", make_redis, server, events)
    for store in opened:
        await store.close()


@pytest.fixture
async def store(kit: StoreKit) -> Any:
    return await kit.make()


PRINCIPAL = Principal(id="agent-1", issuer="https://idp.test", subject="agent-1",
                      attributes={"tenant": "acme"}, chain=(Actor("orchestrator"),))


def draft(clock: Clock, args: dict[str, Any] | None = None, *, ttl: float = 900, quorum: int = 1,
          principal: Principal = PRINCIPAL, tool: str = "pay") -> Approval:
    args = {"amount": 10, "account": "A-1"} if args is None else args
    digest = args_digest(args)
    return Approval(
        id=new_id(), state="pending", upstream="payments", tool=tool, principal=principal.id,
        principal_key=principal.key, chain=tuple(principal.chain_ids), tenant=principal.tenant, args=args,
        args_digest=digest, policies=("pay-needs-approval",), created_at=clock(), expires_at=clock() + ttl,
        key=binding_key(principal.key, "payments", tool, digest), subject=principal.subject, quorum=quorum)


def call_context(args: dict[str, Any] | None = None, *, outcome: str = "approval_required",
                 principal: Principal = PRINCIPAL, notify: Any = None, progress_token: Any = None) -> CallContext:
    ctx = CallContext(method="tools/call", request_id=1,
                      params={"name": "pay", "arguments": {"amount": 10, "account": "A-1"} if args is None else args},
                      principal=principal, upstream="payments", tool=ToolInfo("payments", "pay"),
                      decision=Decision(outcome, ("pay-needs-approval",), policy_version="v1"),  # type: ignore[arg-type]
                      notify=notify, progress_token=progress_token, cancelled=asyncio.Event())
    return ctx


class Sink:
    """A ctx.notify that records messages and lets a test await the n-th one."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, message: dict[str, Any]) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def wait_for(self, count: int, within_s: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.messages) >= count), within_s)


async def eventually(predicate: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll an async predicate until true (bounded); for state owned by another process."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- the approvers' web surface on a real aiohttp server ----------------------------------------

@dataclass
class WebKit:
    url: str
    store: Any
    issuer: Any
    audience: str
    http: Any
    checks: list[tuple[str, str]] = field(default_factory=list)

    def token(self, sub: str, groups: tuple[str, ...] = ("approvers",)) -> str:
        return str(self.issuer.mint(sub, aud=self.audience, groups=list(groups)))

    def bearer(self, sub: str, groups: tuple[str, ...] = ("approvers",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, groups)}"}


def groups_check(checks: list[tuple[str, str]]) -> Callable[[Principal, Approval], Decision]:
    """Stands in for the Cedar `approve` decision: members of group `approvers` may decide."""

    def check(approver: Principal, approval: Approval) -> Decision:
        checks.append((approver.id, approval.id))
        groups = approver.attributes.get("groups") or []
        return Decision("allow" if "approvers" in groups else "deny", ("approvers-decide",))

    return check


@pytest.fixture
async def web_kit(kit: StoreKit, tmp_path: Any) -> AsyncIterator[WebKit]:
    import aiohttp
    from aiohttp import web

    from gateway.approvals.web import approval_routes
    from gateway.config.model import IdentityConfig, IssuerConfig
    from gateway.identity.identifier import JwtIdentifier
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path)
    audience = "http://approvals.test/mcp"
    identity = IdentityConfig(mode="jwt", issuers=(IssuerConfig(**issuer.config(audience=audience)),))
    identifier = JwtIdentifier(identity, {}, "http://approvals.test", None)
    await identifier.start()
    store = await kit.make()
    checks: list[tuple[str, str]] = []
    app = web.Application()
    app.add_routes(approval_routes(store, identifier, groups_check(checks), keepalive_s=0.5))
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        yield WebKit(f"http://127.0.0.1:{port}", store, issuer, audience, http, checks)
    await runner.cleanup()
    await identifier.close()
