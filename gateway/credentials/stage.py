"""credential: decide which single credential header the upstream gets for this call (none passes through).

The stage replaces `ctx.upstream_headers` with exactly the header its upstream's mode produces:
nothing for `none`, the configured value for `static`, a minted JWT for `minted`, an exchanged
token for `token_exchange`. The agent's own Authorization header, cookies and any other inbound
header never reach an upstream. It also settles `ctx.task_id` and strips the task hint from `_meta`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.context import CallContext, Principal
from gateway.credentials.exchange import TokenExchanger
from gateway.credentials.minter import Minter, audience_of
from gateway.credentials.static import StaticCredentials
from gateway.credentials.tasks import META_TASK_KEY, TaskTracker
from gateway.errors import GatewayError

Handler = Callable[[CallContext, UpstreamConfig], Awaitable[dict[str, str]]]
# ctx.extra key: `async (ctx) -> headers`, the call's credential again (gateway/forward.py hands it to the transport).
REFRESH_KEY = "credential_refresh"


def _bearer_value(upstream: UpstreamConfig, token: str) -> str:
    creds = upstream.credentials
    if creds.value_prefix:
        return creds.value_prefix + token
    return f"Bearer {token}" if creds.header.lower() == "authorization" else token


def strip_task_meta(ctx: CallContext) -> None:
    """Remove the gateway's own `_meta` task hint so the upstream does not see it."""
    meta = ctx.params.get("_meta")
    if isinstance(meta, dict) and META_TASK_KEY in meta:
        ctx.params = {**ctx.params, "_meta": {k: v for k, v in meta.items() if k != META_TASK_KEY}}


class CredentialStage:
    """Sets ctx.task_id, ctx.upstream_headers (only the credential), ctx.credential_mode/audience."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig], minter: Minter, exchanger: TokenExchanger,
                 tasks: TaskTracker, static: StaticCredentials) -> None:
        self.upstreams = upstreams
        self.minter = minter
        self.exchanger = exchanger
        self.tasks = tasks
        self.static = static
        self._modes: dict[str, Handler] = {"none": self._none, "static": self._static,
                                           "minted": self._minted, "token_exchange": self._exchange}

    async def __call__(self, ctx: CallContext) -> None:
        ctx.upstream_headers = {}  # no passthrough: whatever was there is dropped
        if ctx.task_id is None:
            ctx.task_id = self.tasks.resolve(ctx)
        strip_task_meta(ctx)
        upstream = self.upstreams.get(ctx.upstream) if ctx.upstream else None
        if upstream is None:
            raise GatewayError("credential_unavailable", data={"upstream": ctx.upstream})
        mode = upstream.credentials.mode
        ctx.credential_mode = mode
        ctx.credential_audience = audience_of(upstream) if mode in ("minted", "token_exchange") else None
        ctx.upstream_headers = await self._produce(ctx, upstream)
        if mode != "none":  # for requests made later on the call's behalf (a resumed answer stream)
            ctx.extra[REFRESH_KEY] = self.again  # not a closure over ctx: no reference cycle per call

    async def _produce(self, ctx: CallContext, upstream: UpstreamConfig) -> dict[str, str]:
        if ctx.credential_audience is not None:
            assert ctx.task_id is not None
            await self.tasks.ensure_live(ctx.task_id)  # not a cached token of a task ended on another replica
        try:
            return await self._modes[upstream.credentials.mode](ctx, upstream)
        except GatewayError:
            raise
        except Exception as exc:  # never surface internals (or secrets in messages) to the agent
            raise GatewayError("credential_unavailable") from exc

    async def again(self, ctx: CallContext) -> dict[str, str]:
        """The call's credential once more, valid now: the same scope and narrowed arguments (a cache hit while
        the first token has its margin left), never for a task that has ended. The call's record keeps naming
        the credential it was sent with."""
        upstream = self.upstreams.get(ctx.upstream) if ctx.upstream else None
        if upstream is None:
            raise GatewayError("credential_unavailable", data={"upstream": ctx.upstream})
        sent = ctx.extra.get("credential")
        try:
            return await self._produce(ctx, upstream)
        finally:
            if sent is not None:
                ctx.extra["credential"] = sent

    async def connect_headers(self, principal: Principal, upstream: str, task_id: str,
                              method: str = "initialize") -> dict[str, str]:
        """The credential header for requests that are not a tool call (session set-up, listings).

        A minted token here carries an empty `scope` (no tool) and is bound to the task like any other.
        """
        ctx = CallContext(method=method, request_id=None, params={}, principal=principal, upstream=upstream,
                          task_id=task_id, action="connect")
        await self(ctx)
        return ctx.upstream_headers

    async def _none(self, ctx: CallContext, upstream: UpstreamConfig) -> dict[str, str]:
        return {}

    async def _static(self, ctx: CallContext, upstream: UpstreamConfig) -> dict[str, str]:
        name, value = self.static.header(upstream.name)
        return {name: value}

    async def _minted(self, ctx: CallContext, upstream: UpstreamConfig) -> dict[str, str]:
        assert ctx.task_id is not None
        tool_names = [ctx.tool.name] if ctx.tool is not None else []
        # The item's own arguments: a tool call's and a prompt's (`params.arguments`); a read and a session's
        # set-up requests have none.
        args: Mapping[str, Any] = ctx.args if ctx.method in ("tools/call", "prompts/get") else {}
        token, claims = await self.minter.mint(ctx.principal, upstream, tool_names, args, ctx.task_id,
                                               self.tasks.known_end(ctx.task_id, ctx.principal))
        ctx.extra["credential"] = {"jti": claims["jti"], "exp": claims["exp"], "aud": claims["aud"]}
        return {upstream.credentials.header: _bearer_value(upstream, token)}

    async def _exchange(self, ctx: CallContext, upstream: UpstreamConfig) -> dict[str, str]:
        assert ctx.task_id is not None
        token, expires_at = await self.exchanger.exchange(ctx.principal, upstream, ctx.task_id,
                                                          self.tasks.known_end(ctx.task_id, ctx.principal))
        ctx.extra["credential"] = {"exp": int(expires_at), "aud": audience_of(upstream)}
        return {upstream.credentials.header: _bearer_value(upstream, token)}
