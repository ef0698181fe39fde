"""Pieces every upstream transport shares: circuit breaker, handshake messages, response checks.

The breaker counts consecutive *connection* failures (refused, reset, child failed to start), not
slow tools or JSON-RPC errors: after `threshold` of them calls fail fast with upstream_unavailable
for `cooldown_s`, then one trial is let through; its outcome closes or re-opens the circuit. The
trial is a client call or, for HTTP upstreams, the readiness probe, whichever comes first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from gateway import __version__
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Message, NotifyHook, SessionEnded

DEFAULT_CLIENT_INFO: Mapping[str, Any] = {"name": "customs", "version": __version__}
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN_S = 10.0


class SessionClock:
    """How long an upstream MCP session lasted, told to the upstream's `on_session_end` hook once when it ends.

    With no hook (metrics off) nothing is timed."""

    __slots__ = ("_hook", "_since")

    def __init__(self) -> None:
        self._hook: SessionEnded | None = None
        self._since: float | None = None

    def began(self, hook: SessionEnded | None) -> None:
        self._hook = hook
        self._since = time.monotonic() if hook is not None else None

    def ended(self, protocol_version: str | None, error: str | None = None) -> None:
        since, self._since = self._since, None
        if since is not None and self._hook is not None:
            self._hook(time.monotonic() - since, protocol_version, error)


class Unsent(GatewayError):
    """`upstream_unavailable` that proves the upstream never ran the request (see never_sent): nothing of it was
    written, or the upstream refused it for a session it no longer knows."""

    def __init__(self, message: str | None = None, *, data: dict[str, Any] | None = None) -> None:
        super().__init__("upstream_unavailable", message, data=data)


class CircuitBreaker:
    """Fail fast after repeated connection failures; one trial call after the cooldown."""

    def __init__(self, threshold: int = DEFAULT_BREAKER_THRESHOLD, cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic, upstream: str | None = None) -> None:
        self.upstream = upstream  # named in the error, as every other upstream_* error names it
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def detail(self) -> str:
        return f"circuit open after {self.failures} consecutive connection failures" if self.is_open else "ok"

    def check(self) -> None:
        """Raise upstream_unavailable while open; after the cooldown admit one trial call at a time.

        A trial whose outcome never arrives (it timed out or was cancelled) does not wedge the circuit:
        after another cooldown the next call becomes the trial."""
        if self._opened_at is None or self.admit_trial():
            return
        data = {"circuit": "open"} if self.upstream is None else {"circuit": "open", "upstream": self.upstream}
        raise Unsent("Upstream unavailable (circuit open)", data=data)

    def admit_trial(self) -> bool:
        """Take the one trial slot of an open circuit if the cooldown allows it now (False when closed).

        Client calls and the readiness probe share this slot, so together they reach a dead upstream
        at most once per cooldown; the taker must report success(), failure() or release_trial()."""
        if self._opened_at is None:
            return False
        now = self._clock()
        cooled = now - self._opened_at >= self.cooldown_s
        if cooled and (self._trial_at is None or now - self._trial_at >= self.cooldown_s):
            self._trial_at = now
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._trial_at = None

    def failure(self) -> None:
        self.failures += 1
        if self._trial_at is not None or self.failures >= self.threshold:
            self._opened_at = self._clock()
        self._trial_at = None

    def release_trial(self) -> None:
        """The trial call ended without telling us anything about the connection (e.g. cancelled)."""
        self._trial_at = None


def never_sent(error: BaseException | None) -> bool:
    """True for an upstream failure that proves the upstream never ran the request: the circuit was open, nothing
    was written (`Unsent`: a stdio child stopped, not ready or not running, its session closed), no
    connection to the upstream could be made (refused, name not resolved, TLS handshake failed), or the upstream
    answered 404 for a session it no longer knows (restarted), which it must do before running anything. A
    connection that broke later may have carried the request (it may have run), so it does not count."""
    if not isinstance(error, GatewayError) or error.reason != "upstream_unavailable":
        return False
    # By type, not by `data`: a session found expired while resuming a call's answer stream has the same wire data,
    # but the upstream had taken the call first (streamable_answer._resume).
    return isinstance(error, Unsent) or isinstance(error.__cause__, aiohttp.ClientConnectorError)


def initialize_message(request_id: Any, params: ConnectParams, trace: Mapping[str, str] | None = None) -> Message:
    """`initialize`; `trace` (the set-up's trace context) rides in `params._meta`, as on every traced request."""
    body: dict[str, Any] = {
        "protocolVersion": params.protocol_version,
        "capabilities": dict(params.capabilities or {}),
        "clientInfo": dict(params.client_info or DEFAULT_CLIENT_INFO),
    }
    if trace:
        body["_meta"] = dict(trace)
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": body}


INITIALIZED: Message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
# Told to the client when an upstream session had to be opened again (the upstream most likely restarted,
# perhaps as a new version): what the gateway knows of its tools is stale and is listed again.
TOOLS_CHANGED: Message = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


def initialized_message(trace: Mapping[str, str] | None = None) -> Message:
    """`notifications/initialized`, with the set-up's trace context in `params._meta` when there is one."""
    return {**INITIALIZED, "params": {"_meta": dict(trace)}} if trace else INITIALIZED


def with_trace(headers: Mapping[str, str], trace: Mapping[str, str] | None) -> Mapping[str, str]:
    """A set-up request's headers: the session's, plus the trace context's `traceparent`/`tracestate`."""
    return {**headers, **trace} if trace else headers


class HeldSubscriptions:
    """The resource URIs an upstream session holds subscriptions to (`resources/subscribe` answered, no
    `resources/unsubscribe` since), so that a session re-opened after the upstream forgot it (restarted) holds
    them again: the agent's own session never ended, and would otherwise get no more updates."""

    def __init__(self) -> None:
        self.uris: set[str] = set()

    def note(self, message: Message, response: Message) -> None:
        method = message.get("method")
        if method not in ("resources/subscribe", "resources/unsubscribe") or "result" not in response:
            return
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        if isinstance(uri, str):
            (self.uris.add if method == "resources/subscribe" else self.uris.discard)(uri)

    def again(self) -> list[Message]:
        """The requests that subscribe a fresh upstream session to every URI held."""
        return [{"jsonrpc": "2.0", "id": f"customs-resubscribe-{n}", "method": "resources/subscribe",
                 "params": {"uri": uri}} for n, uri in enumerate(sorted(self.uris))]


async def subscribe_again(request: Callable[[Message], Awaitable[Message]], message: Message,
                          log: logging.Logger) -> None:
    """Send one of `HeldSubscriptions.again()` on a re-opened session (in the background: best effort)."""
    try:
        await request(message)
    except GatewayError as exc:
        log.info("could not subscribe to %s again on a re-opened session: %s", message["params"]["uri"], exc)


def cancelled_message(upstream_id: Any, reason: str) -> Message:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": upstream_id, "reason": reason}}


async def send_own(hook: NotifyHook | None, message: Message, send: Callable[[Message], Awaitable[None]]) -> None:
    """Send a notification of the gateway's own, through the upstream's tracing hook when it has one."""
    await (hook(message, send) if hook is not None else send(message))


def id_key(value: Any) -> tuple[str, Any]:
    """A dict key for a JSON-RPC id that keeps 1 and "1" apart."""
    return (type(value).__name__, value if isinstance(value, (str, int, float, type(None))) else repr(value))


def is_response(message: Message) -> bool:
    return "method" not in message and ("result" in message or "error" in message)


def check_response(message: Any, upstream_id: Any) -> Message:
    """A well-formed JSON-RPC response to `upstream_id`, else upstream_error."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise GatewayError("upstream_error", "upstream sent an invalid JSON-RPC message")
    if not is_response(message) or ("result" in message) == ("error" in message):
        raise GatewayError("upstream_error", "upstream sent an invalid JSON-RPC response")
    if message.get("id") != upstream_id or type(message.get("id")) is not type(upstream_id):
        raise GatewayError("upstream_error", "upstream answered a different request id")
    if "error" in message and (flaw := error_flaw(message["error"])) is not None:
        raise GatewayError("upstream_error", f"upstream sent an invalid JSON-RPC error: {flaw}")
    return message


def error_flaw(error: Any) -> str | None:
    """What makes an answer's `error` no JSON-RPC error object (passed on, the agent's client would choke), if any."""
    if not isinstance(error, dict):
        return "not an object"
    if type(error.get("code")) is not int:
        return "its code is not an integer"
    if not isinstance(error.get("message"), str):
        return "its message is not a string"
    return None


def with_id(message: Message, new_id: Any) -> Message:
    return {**message, "id": new_id}


def _bounded(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters at the end of a word, `…` marking the cut. The secrets it may quote (a key, the
    token the refused request carried) are taken out by their exact value later (server_messages.scrub_error): one cut
    in the middle would no longer match and reach the agent in part, so a word that does not fit is dropped whole."""
    if len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit)  # the last word end that leaves room for the `…`
    return f"{text[:max(space, 0)]}…"


def check_initialize(response: Message) -> Message:
    """The initialize result; a JSON-RPC error or a malformed result means the upstream is unusable."""
    if "error" in response:
        error = response["error"]
        raise GatewayError("upstream_error", _bounded(f"upstream rejected initialize: {error.get('message', '')}"),
                           data={"upstream_error": error})
    result = response.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
        raise GatewayError("upstream_error", "upstream sent an invalid initialize result")
    return result


def progress_token(message: Message) -> Any:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


# The only revision with JSON-RPC batches (2025-03-26 added them, 2025-06-18 removed them): an upstream that
# negotiated it may send one (stdio and legacy SSE read it item by item); under any other it breaks the protocol.
BATCH_REVISIONS = frozenset({"2025-03-26"})

# MCP's logging levels, least severe first (`logging/setLevel`, `notifications/message`).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Notifications that concern every session of an upstream, not one request.
BROADCAST_METHODS = frozenset({
    "notifications/tools/list_changed", "notifications/resources/list_changed",
    "notifications/prompts/list_changed", "notifications/resources/updated",
})


def remap_cancel(message: Message, upstream_id_for: Callable[[Any], Any]) -> Message | None:
    """A client's notifications/cancelled rewritten to the upstream id of that request.

    None when nothing of that caller is in flight here (there is nothing to cancel). Other messages
    pass unchanged.
    """
    if message.get("method") != "notifications/cancelled":
        return message
    params = dict(message.get("params") or {})
    upstream_id = upstream_id_for(params.get("requestId"))
    if upstream_id is None:
        return None
    return {**message, "params": {**params, "requestId": upstream_id}}
