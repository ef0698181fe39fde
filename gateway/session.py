"""One client session's state: who it belongs to, its upstream sessions, its stream's outbox and replay.

gateway/sessions.py creates, finds and ends sessions. A session's stream keeps the last events for a
client resuming with Last-Event-ID (REPLAY_EVENTS, REPLAY_BYTES) and queues what an open stream has not sent
yet, bounded in messages and bytes (OUTBOX_*).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.context import Principal
from gateway.jsonrpc import dumps
from gateway.outbox import Outbox
from gateway.server_messages import SendFn, ServerRequestRoute
from gateway.transport.base import Message, UpstreamSession

log = logging.getLogger("customs.sessions")
# Events a session keeps for a client resuming its stream (Last-Event-ID) ...
REPLAY_EVENTS = 256
# ... and at most this many bytes of them (the newest one always): an upstream's messages are up to 16 MiB each, and
# a session keeps them whether or not its client ever listens.
REPLAY_BYTES = 4 << 20
# Unread stream messages: past the first, notifications are dropped (never an answer or a server→client
# request); past the second, answers included, the stream is closed, so the client learns they are lost.
OUTBOX_NOTIFICATIONS, OUTBOX_LIMIT = 256, 4096
# ... and the same two bounds on the bytes of them (encoded): an upstream's message is up to 16 MiB, so 4,096 of
# them could hold gigabytes for one client that does not read. Notifications stop at what the replay keeps for a
# resuming GET (REPLAY_BYTES), everything at four times that; below a bound the next message is queued whatever
# its size (as the replay always keeps the newest), so a session holds at most the bound plus one message.
OUTBOX_NOTIFICATION_BYTES, OUTBOX_BYTES = REPLAY_BYTES, 16 << 20
# Distinct credential values a session keeps to take out of what its upstreams send (Session.carried): its calls' and
# its upstream sessions' own (set-up, GET stream, DELETE), 64 credentials at two values each (the header's whole value
# and its token after the scheme). Distinct values, not calls: minted and exchanged tokens are cached and reused by
# many calls, and a value carried again moves to the newest end, so a credential drops out only once 64 others were
# carried after its last use (a session calling more than 64 tools or argument sets within a token's life).
CARRIED_CREDENTIALS = 128
# Queued on an ended session's outbox: its open stream (GET, legacy SSE) closes now, not at its next keep-alive.
STREAM_END: tuple[str, Message] = ("end", {})


class CarriedCredentials(dict[str, None]):
    """The distinct credential values sent upstream for a session, least recently carried first, at most `limit`.

    A value carried again moves to the end: a token cached and reused by a hundred calls holds one place, and a
    credential from long ago is kept while no `limit` others came after it (a deque of the last values was filled with
    duplicates of the reused token, and an older one still valid dropped out). Empty values are not kept. A dict of
    its own (insertion-ordered, the oldest first): asking whether a session carried any, on every call and every
    message routed, is the dict's own C-level length, not a Python `__len__`."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int = CARRIED_CREDENTIALS) -> None:
        super().__init__()
        self._limit = limit

    def extend(self, values: Iterable[str]) -> None:
        for value in values:
            if not value:
                continue
            self.pop(value, None)
            self[value] = None
        while len(self) > self._limit:
            del self[next(iter(self))]


def credential_values(headers: Mapping[str, str]) -> list[str]:
    """The exact values credential headers carry: each whole, and its token after a scheme or prefix that ends in a
    space (`Bearer x`, and any `credentials.value_prefix` such as `JWT-1 x`: only a scheme of letters was split off,
    and an upstream quoting the bare token after another prefix handed it to the agent). A prefix with no space at
    its end (`token=x`, `key:x`) gives its token as the value's last run of token characters (RFC 7235 token68,
    at least MIN_BARE_TOKEN long: a shorter run would redact words)."""
    values = []
    for value in headers.values():
        values.append(value)
        # After the first space and after the last: a token has none, a prefix may have several.
        tail = _TOKEN_TAIL.search(value)
        for token in dict.fromkeys((value.partition(" ")[2].strip(), value.rpartition(" ")[2].strip(),
                                    tail[0] if tail is not None and len(tail[0]) >= MIN_BARE_TOKEN else "")):
            if token and token != value:
                values.append(token)
    return values


MIN_BARE_TOKEN = 16
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9\-._~+/]+=*$")  # token68 (RFC 7235 2.1) at the value's end


class Cancellable(Protocol):
    """A call in flight: a task, or a handle that withdraws a call running in its HTTP handler's task."""

    def cancel(self) -> Any: ...


@runtime_checkable
class Withdrawing(Protocol):
    """A handle on a call running in its HTTP handler's task (gateway/http/resumable.py: Withdrawal)."""

    reason: str

    def cancel(self, reason: str = ...) -> Any: ...


@dataclass
class Session:
    id: str
    principal_key: str
    view: str | None  # None: the aggregated /mcp endpoint; else one upstream's name
    protocol_version: str
    client_info: Mapping[str, Any] | None = None
    capabilities: Mapping[str, Any] | None = None
    stateless: bool = False
    legacy_sse: bool = False  # a 2024-11-05 HTTP+SSE session: messages arrive on /messages only
    init_result: dict[str, Any] | None = None  # the upstream's own answer, for pass-through sessions
    # The least severe log level its client asked for with a `logging/setLevel` the gateway accepted (index in
    # LOG_LEVELS; gateway/server_messages.py): log lines below it are not given to it, whatever the upstream sends.
    log_level: int = 0
    # The secrets the gateway holds taken out of what upstreams send this session's client (Redactor.scrub_known,
    # gateway/server_messages.py): None when there is nothing to take out.
    scrub: Callable[[Any], Any] | None = None
    # The credentials carried upstream for the session (minted, exchanged: its calls', gateway/forward.py, and its
    # upstream sessions' own, SessionManager.headers), taken out of what upstreams send its client as `scrub` takes
    # out the secrets the gateway holds; the CARRIED_CREDENTIALS distinct values most recently carried (two a
    # credential: the header's and its token).
    carried: CarriedCredentials = field(default_factory=CarriedCredentials)
    principal: Principal | None = None  # the latest identity presented (a refreshed token updates it)
    upstreams: dict[str, UpstreamSession] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=Outbox)  # bounded by stream_event, in messages and bytes
    close_stream: Callable[[], None] | None = None  # set by a legacy SSE stream: ends it (OUTBOX_LIMIT)
    dropping: bool = False  # notifications are being dropped (logged once per stretch)
    # The last session-stream events (number, message, its size), so a client reconnecting with Last-Event-ID
    # misses nothing; bounded by REPLAY_EVENTS and REPLAY_BYTES.
    replay: deque[tuple[int, Message, int]] = field(default_factory=deque)
    replay_bytes: int = 0
    event_seq: int = 0
    get_stream_open: bool = False
    server_requests: dict[str, ServerRequestRoute] = field(default_factory=dict)
    progress_routes: dict[Any, SendFn] = field(default_factory=dict)
    inflight: dict[Any, Cancellable] = field(default_factory=dict)  # request id -> its running call
    last_used: float = field(default_factory=time.monotonic)
    opened: float = field(default_factory=time.monotonic)  # for mcp.server.session.duration
    closed: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def next_server_request_id(self) -> str:
        return f"customs-{next(self._ids)}"

    def stream_event(self, message: Message) -> None:
        """Record a message for the session's GET stream and queue it when a stream is open."""
        self.event_seq += 1
        if self.legacy_sse and not self.get_stream_open:
            return
        size = len(dumps(message))  # once, for the replay and the outbox's bytes
        if not self.legacy_sse:  # 2024-11-05 has no resumption: kept, a legacy stream's answers only held memory
            self._keep(message, size)
        if not self.get_stream_open:
            return
        queued, held = self.outbox.qsize(), self.outbox.bytes
        if "id" not in message and (queued >= OUTBOX_NOTIFICATIONS or held >= OUTBOX_NOTIFICATION_BYTES):
            if not self.dropping:
                self.dropping = True
                log.warning("session %s: the client is not reading its stream; notifications are dropped until it "
                            "catches up (answers are kept; Last-Event-ID resumes from the replay)", self.id[:8])
            return
        if queued >= OUTBOX_LIMIT or held >= OUTBOX_BYTES:
            # A Streamable HTTP GET stream (no close_stream) is resumed from the replay; a legacy one is closed.
            if self.close_stream is not None:
                log.warning("session %s: the client has not read %d messages (%d bytes) on its stream, answers "
                            "included; closing the stream", self.id[:8], queued, held)
                self.close_stream()
            return
        if queued < OUTBOX_NOTIFICATIONS and held < OUTBOX_NOTIFICATION_BYTES:
            self.dropping = False
        self.outbox.put_nowait((str(self.event_seq), message), size)

    def _keep(self, message: Message, size: int) -> None:
        """Add one event (`size` bytes encoded) to the replay, dropping the oldest past its bounds (the newest is
        always kept)."""
        self.replay.append((self.event_seq, message, size))
        self.replay_bytes += size
        while len(self.replay) > 1 and (len(self.replay) > REPLAY_EVENTS or self.replay_bytes > REPLAY_BYTES):
            self.replay_bytes -= self.replay.popleft()[2]

    def awaited_requests(self) -> list[tuple[str, Message]]:
        """Buffered server→client requests sent while the client had no GET stream, still awaiting its answer: a GET
        stream opened without Last-Event-ID brings them, once (else they would never reach it)."""
        unseen: list[tuple[str, Message]] = []
        for number, message, _ in self.replay:
            route = self.server_requests.get(message["id"]) if isinstance(message.get("id"), str) else None
            if route is not None and route.unseen and "method" in message:
                route.unseen = False
                unseen.append((str(number), message))
        return unseen

    def events_after(self, last_event_id: str | None) -> list[tuple[str, Message]]:
        """Events a reconnecting client has not seen (all buffered ones for an unknown id)."""
        try:
            last = int(last_event_id) if last_event_id is not None else None
        except ValueError:
            last = None
        if last is None:
            return []
        return [(str(n), m) for n, m, _ in self.replay if n > last]
