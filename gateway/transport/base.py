"""The upstream seam: how the gateway talks JSON-RPC to one configured MCP server.

Messages are plain JSON-RPC dicts, so the gateway stays protocol-transparent: whatever the
upstream sends, the client receives. Implementations: streamable_http.py, sse.py, stdio.py.

Id ownership: `UpstreamSession.request` assigns its own upstream-side id and restores the
caller's id on the response, so callers never see or collide on upstream ids. Server→client
requests arriving from the upstream are handed to `on_message` with the upstream's id; the
answer goes back through `UpstreamSession.respond` with that same id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, Any]
MessageHandler = Callable[[Message], Awaitable[None]]
# True while a transport hands on a message whose request it could only guess: several calls were live on one
# channel (a shared stdio child, a legacy SSE stream) and the message named none. It still goes to the latest
# call's stream, but tracing must not put it in that call's trace (`http_base.deliver(guessed=True)`).
ROUTE_GUESSED: ContextVar[bool] = ContextVar("customs_route_guessed", default=False)
# Told the request id actually sent upstream, the upstream session it went in (its `Mcp-Session-Id`; None
# where the transport has no session id: stdio, legacy SSE, an upstream that gave none) and the protocol
# version spoken with the upstream.
SentId = Callable[[Any, str | None, str | None], None]
# Told that an upstream MCP session ended: (seconds it lasted, its protocol version, error type or None).
SessionEnded = Callable[[float, str | None, str | None], None]
# A notification the gateway sends upstream on its own (notifications/cancelled): (message, the transport's
# send) -> sent. The tracing hook (`on_notify`) sends it inside its CLIENT span, the span's context in `_meta`.
NotifyHook = Callable[[Message, Callable[[Message], Awaitable[None]]], Awaitable[None]]
# Yields the credential header(s) for session-level traffic, valid at the time of the call.
HeadersSource = Callable[[], Awaitable[Mapping[str, str]]]

# The handshake revision the gateway speaks to upstreams unless the client asked for another.
DEFAULT_UPSTREAM_PROTOCOL = "2025-11-25"


@dataclass(frozen=True)
class Health:
    ready: bool
    detail: str = "ok"
    restarts: int = 0


@dataclass(frozen=True)
class ConnectParams:
    """What the gateway tells an upstream when it opens a session on a client's behalf."""

    protocol_version: str = DEFAULT_UPSTREAM_PROTOCOL
    client_info: Mapping[str, Any] | None = None
    capabilities: Mapping[str, Any] | None = None
    # The gateway asks for itself (the pin watcher's list): no client stands behind the session, so a
    # shared stdio child never counts it as a session that could own what the child sends.
    internal: bool = False
    # The W3C trace context (traceparent, tracestate) of the span the session is opened under, sent with the
    # set-up requests only (initialize, notifications/initialized, a legacy SSE stream's GET): as headers and in
    # `params._meta`. Never kept for the session's later requests, which carry their own.
    trace_context: Mapping[str, str] | None = None


class UpstreamSession(Protocol):
    """One MCP session with one upstream (for stdio, a shared session over the child's pipes)."""

    @property
    def initialize_result(self) -> Message: ...

    async def request(self, message: Message, *, headers: Mapping[str, str] | None = None,
                      on_message: MessageHandler | None = None, timeout: float | None = None,  # noqa: ASYNC109
                      sent_id: SentId | None = None, refresh: HeadersSource | None = None) -> Message:
        """Send a JSON-RPC request; return its response (result or error) carrying the caller's id.

        `headers`: this request's own (its credential); `refresh`, when given, yields them again, valid now, for
        requests made later on its behalf (a resumed answer stream, once the first credential may have expired).

        Messages the upstream sends while answering (progress, logging, server→client requests on
        the response stream) go to `on_message`. The upstream sees its own request id (ids of the
        sessions sharing a connection would collide): `sent_id`, when given, is told that id, the
        upstream session id and version before the request is sent (the CLIENT span records them). Raises
        GatewayError upstream_unavailable / upstream_timeout / upstream_error; on timeout or
        cancellation a notifications/cancelled is sent upstream. Never retried.
        """
        ...

    async def notify(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        """Send a notification (e.g. notifications/cancelled with the caller's request id, remapped)."""
        ...

    async def respond(self, message: Message) -> None:
        """Answer a server→client request (message carries the upstream's id)."""
        ...

    async def close(self) -> None:
        """End the session (HTTP DELETE where supported). Idempotent."""
        ...


class Upstream(Protocol):
    """A configured upstream: lifecycle, health, and sessions."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> Health: ...

    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *,
                      credentials: HeadersSource | None = None) -> UpstreamSession:
        """Open a session (initialize + notifications/initialized). `on_message` receives
        messages not tied to one request (GET stream, list_changed, resource updates).

        `headers` go with the set-up requests. `credentials`, where given, is asked again for every
        later request the session makes on its own (notifications, answers, cancellations, stream
        reconnects, re-open, the DELETE), because a credential minted at set-up may have expired."""
        ...
