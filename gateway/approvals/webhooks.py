"""Webhook notifications of new pending calls: Slack-compatible JSON, HMAC-signed, retried in the background.

`notify()` only enqueues (never blocks the pipeline); worker tasks owned by `WebhookNotifier`
deliver with exponential backoff; at shutdown `close()` gives them until the drain deadline's bound
(`shutdown_bound`) and logs, by approval id, what it did not deliver. Receivers verify
`X-Customs-Signature: sha256=<hex>` — the HMAC-SHA256 of the raw body with the webhook's secret — or, to
refuse stale (replayed) deliveries, `X-Customs-Signature-Timestamped`, the same over
`<X-Customs-Timestamp>.<body>`: every attempt is stamped and signed afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway.approvals.cli import shown
from gateway.approvals.model import Approval
from gateway.config.model import WebhookConfig

log = logging.getLogger("customs.approvals.webhooks")
ARGS_SHOWN = 2500  # characters of the arguments' JSON in the Slack text (the page and `approval` have them all)
# Slack refuses a message (400 invalid_blocks) whose section text is over 3,000 characters or a field over 2,000: the
# limits count what is sent, escapes included, so every block is cut to them after escaping.
SECTION_MAX, FIELD_MAX = 3000, 2000
RETRY_AFTER_MAX_S = 60.0  # the longest wait a receiver's Retry-After gets (each webhook has its own workers)
SIGNATURE_HEADER = "X-Customs-Signature"
TIMESTAMP_HEADER = "X-Customs-Timestamp"
# The body-only signature cannot tell a replay: whoever captured a delivery may send it again with any timestamp.
# Receivers rely on its meaning, so it stays; this one covers the timestamp too (docs/approvals.md, Webhooks).
TIMESTAMPED_HEADER = "X-Customs-Signature-Timestamped"
# Once SIGTERM set the drain deadline, close() waits for deliveries at least this when its bound has come: shutdown's
# earlier steps may have used the deadline up (a hung Redis until its cut-off), and a receiver that answers takes
# milliseconds; a mute one costs the exit this at most (as the token revocations: gateway/credentials/as_revocation.py).
CLOSE_MIN_S = 0.25
UNSENT_NAMED = 10  # approval ids the shutdown log names per webhook; the rest are counted


def retry_after(value: str | None) -> float:
    """Seconds a 429/503's `Retry-After` (delta-seconds or an HTTP date) asks to wait, at most RETRY_AFTER_MAX_S;
    0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return min(max(0.0, when.timestamp() - time.time()), RETRY_AFTER_MAX_S)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(secret: str | None, body: bytes, now: float) -> dict[str, str]:
    """One attempt's headers: its timestamp and, with a secret, the body's signature and the timestamped one."""
    timestamp = str(int(now))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
        headers[TIMESTAMPED_HEADER] = sign(secret, timestamp.encode() + b"." + body)
    return headers


def mrkdwn(value: str) -> str:
    """Slack's escaping of text: the agent's and upstream's words (tool names, arguments, ids) must never
    turn into `<url|label>` links or `<!channel>` mentions in the approvers' channel; and a character not drawn
    as itself (zero-width, a bidi override: `\\u202e7654-A` is drawn `A-4567`) is shown as its escape."""
    value = "\n".join(shown(line) for line in value.split("\n"))
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    """Escaped text cut to `limit` characters (an `…` ends it), never inside an `&amp;`-style escape."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp >= 0 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _args_text(args: object) -> str:
    """The arguments for the code block, cut to ARGS_SHOWN characters with a note saying so: keys are sorted, so
    a long harmless one could otherwise push the one that matters out of sight unannounced. Cut after escaping
    (`<` is sent as `&lt;`), so the block stays within Slack's limit whatever the arguments hold."""
    text = json.dumps(args, indent=2, sort_keys=True, ensure_ascii=False)
    text = mrkdwn(text).replace("```", "`\u200b``")  # a ``` inside would close the code block early
    if len(text) > ARGS_SHOWN:
        shown_part = _clip(text, ARGS_SHOWN)[:-1]
        text = f"{shown_part}\n… cut: {len(text) - len(shown_part)} more characters; the approvals page shows them all"
    return text


def message(approval: Approval, page_url: str | None) -> dict[str, Any]:
    """A Slack-compatible message (`text` + `blocks`), with the Approval itself for programs."""
    who = mrkdwn(approval.principal + (f" (via {' → '.join(approval.chain)})" if approval.chain else ""))
    text = f"Approval needed: {who} wants to call {mrkdwn(approval.upstream)}/{mrkdwn(approval.tool)}{approval.what}"
    fields = [f"*Agent:* {who}", f"*Tenant:* {mrkdwn(approval.tenant or '—')}",
              f"*Required by:* {mrkdwn(', '.join(approval.policies)) or '—'}",
              f"*Expires:* <!date^{int(approval.expires_at)}^{{time}}|{int(approval.expires_at)}>"]
    args = _args_text(approval.args)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_clip(text, SECTION_MAX - 2)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _clip(f, FIELD_MAX)} for f in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{args}```"}},
    ]
    if page_url:
        link = f"{page_url.rstrip('/')}#{approval.id}"
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Review"}, "url": link}]})
        text += f" — {link}"
    return {"text": text, "blocks": blocks, "approval": approval.to_json()}


def origin(url: str, base: str | None = None) -> str:
    """`scheme://host[:port]` of `url` (resolved against `base`), with `/…` when it has more: what the log may say of
    a webhook url, whose path or query is often its credential."""
    try:
        parts = urlsplit(urljoin(base, url) if base else url)
        netloc = parts.netloc.rpartition("@")[2]  # never a user:password
    except ValueError:
        return "(not a URL)"
    more = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{more}" if parts.scheme and netloc else "(not a URL)"


class WebhookNotifier:
    """Owns the delivery queue and workers; start()/close() with the application."""

    def __init__(self, webhooks: Sequence[WebhookConfig], *, page_url: str | None = None,
                 session: aiohttp.ClientSession | None = None, attempts: int = 5, base_delay_s: float = 0.5,
                 timeout_s: float = 10.0, max_queue: int = 1000, workers: int = 2, close_grace_s: float = 5.0) -> None:
        self._hooks = tuple(webhooks)
        self._labels = tuple(f"approvals.webhooks[{i}] ({origin(hook.url)})" for i, hook in enumerate(self._hooks))
        self._page_url = page_url
        self._session = session
        self._owns_session = session is None
        self._attempts = attempts
        self._base_delay = base_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A queue and `workers` workers per webhook: one that hangs or keeps failing (each attempt waits out its
        # timeout, then backs off) must not hold up the others' deliveries, nor fill their queue.
        # Each entry is (approval id, body): the id names an undelivered notification in the shutdown log.
        self._queues: list[asyncio.Queue[tuple[str, bytes]]] = [asyncio.Queue(maxsize=max_queue) for _ in self._hooks]
        self._sending: list[list[str]] = [[] for _ in self._hooks]  # approval ids being delivered, per webhook
        self._workers_n = workers
        self._close_grace_s = close_grace_s
        # Loop time by which close() gives up on deliveries (gateway/app.py: Gateway.close sets it from the drain
        # deadline); None: no deadline, close_grace_s alone.
        self.shutdown_bound: float | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.unsent = 0  # queued or being delivered when close() gave up on them

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        per_hook = zip(self._hooks, self._labels, self._queues, self._sending, strict=True)
        self._workers = [loop.create_task(self._worker(hook, label, queue, sending), name=f"approval-webhook-{i}-{n}")
                         for i, (hook, label, queue, sending) in enumerate(per_hook) for n in range(self._workers_n)]

    async def close(self) -> None:
        """Stop delivering, after up to `close_grace_s` for what is queued or being retried (a call held just
        before a restart stays pending for the agent's retry, which joins it and notifies nobody) and, with a drain
        deadline, only until `shutdown_bound` (at least CLOSE_MIN_S): the whole 5 s held the exit that long past a
        shorter deadline when a receiver did not answer. What is left undelivered is logged by approval id."""
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), self._close_wait_s())
        unsent = [list(sending) for sending in self._sending]  # before the cancellation ends their deliveries
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        for label, queue, ids in zip(self._labels, self._queues, unsent, strict=True):
            while not queue.empty():
                ids.append(queue.get_nowait()[0])
                queue.task_done()
            self._log_unsent(label, ids)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _close_wait_s(self) -> float:
        if self.shutdown_bound is None:
            return self._close_grace_s
        left = self.shutdown_bound - asyncio.get_running_loop().time()
        return min(self._close_grace_s, max(left, CLOSE_MIN_S))

    def _log_unsent(self, label: str, ids: list[str]) -> None:
        """Name the calls whose approvers were not told: their items stay pending, and an agent's retry (which joins
        the item) notifies nobody, so an operator may have to point the approvers at them."""
        if not ids:
            return
        self.unsent += len(ids)
        named = ", ".join(ids[:UNSENT_NAMED]) + (f" and {len(ids) - UNSENT_NAMED} more" if len(ids) > UNSENT_NAMED
                                                  else "")
        log.warning("%s: %d notification(s) not delivered at shutdown: %s; those calls stay pending on the "
                    "approvals page", label, len(ids), named)

    def notify(self, approval: Approval) -> None:
        """Queue one delivery per configured webhook; drop (and count) when the queue is full."""
        if not self._hooks:
            return
        body = json.dumps(message(approval, self._page_url), separators=(",", ":")).encode()
        for label, queue in zip(self._labels, self._queues, strict=True):
            try:
                queue.put_nowait((approval.id, body))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("webhook queue full; dropped notification of %s to %s", approval.id, label)

    async def drain(self) -> None:
        """Wait until every queued delivery finished (tests, orderly shutdown)."""
        for queue in self._queues:
            await queue.join()

    async def _worker(self, hook: WebhookConfig, label: str, queue: asyncio.Queue[tuple[str, bytes]],
                      sending: list[str]) -> None:
        while True:
            approval_id, body = await queue.get()
            sending.append(approval_id)
            try:
                if await self._deliver(hook, label, body):
                    self.delivered += 1
                else:
                    self.failed += 1
            except Exception:
                self.failed += 1
                log.exception("webhook delivery to %s crashed", label)
            finally:
                sending.remove(approval_id)
                queue.task_done()

    async def _deliver(self, hook: WebhookConfig, label: str, body: bytes) -> bool:
        """One notification to one webhook, retried as documented. The log names it by `label`, never its url, which
        is often the hook's own credential (Discord's /api/webhooks/<id>/<token>, a ?token=)."""
        assert self._session is not None
        for attempt in range(self._attempts):
            delay = self._base_delay * 2 ** attempt  # retry backoff, or longer if a 429/503 asks (Retry-After)
            headers = signed_headers(hook.secret, body, time.time())  # per attempt: a retry is stamped afresh
            try:
                # A redirect is not followed: aiohttp would turn the POST into a bodiless GET (which may answer 200)
                # and carry the signature to wherever it points.
                async with self._session.post(hook.url, data=body, headers=headers, timeout=self._timeout,
                                              allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    if 300 <= resp.status < 400:
                        log.warning("webhook %s answered HTTP %s (a redirect, to %s): not followed; set the webhook's "
                                    "url to where it should go", label, resp.status,
                                    origin(resp.headers.get("Location", ""), hook.url))
                        return False
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        log.warning("webhook %s refused the notification: HTTP %s", label, resp.status)
                        return False
                    log.info("webhook %s answered HTTP %s (attempt %d)", label, resp.status, attempt + 1)
                    delay = max(delay, retry_after(resp.headers.get("Retry-After")))
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("webhook %s unreachable (attempt %d): %s", label, attempt + 1, exc)
            if attempt + 1 < self._attempts:
                await asyncio.sleep(delay)
        log.warning("webhook %s: giving up after %d attempts", label, self._attempts)
        return False
