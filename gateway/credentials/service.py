"""The owner of the credential parts: builds keys, store, minter, exchanger, tasks and stage from config.

The composition root wires one object: `CredentialService(config, ...)`, `await start()` at
start-up, `await close()` at shutdown (which ends every task and so revokes its credentials),
`stage` into the pipeline, `routes()` into the application, `session_ended(id)` into the session
manager's end hook, and `redactor` wherever values are logged or shown. It also keeps the signing
keys current: `reload_keys()` on SIGHUP, and a background task that rotates them every
`signing.rotate_every_s` and withdraws retired keys once no token they signed can still be valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import yarl
from aiohttp import web

from gateway.config.model import Config, RedisStore, UpstreamConfig
from gateway.context import Principal
from gateway.credentials.as_revocation import Outcome
from gateway.credentials.exchange import TokenExchanger
from gateway.credentials.keys import SigningKeys, generation_allowed, signer_needed, signer_needed_by
from gateway.credentials.minter import Minter
from gateway.credentials.redaction import Redactor
from gateway.credentials.revocation import MemoryRevocations, RedisRevocations, RevocationStore
from gateway.credentials.stage import CredentialStage
from gateway.credentials.static import StaticCredentials
from gateway.credentials.tasks import EventSink, TaskTracker
from gateway.credentials.web import Introspector, credential_routes

log = logging.getLogger("customs.credentials")

# Ended-task markers outlive the longest possible token by this much.
RETENTION_MARGIN_S = 60.0
# The key maintenance task re-checks at least this often, whatever it last computed.
KEY_CHECK_MAX_S = 60.0


# Headers that carry a credential whatever `secrets.redact_keys` says (as Redactor.redact_headers masks them).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def configured_secrets(upstream: UpstreamConfig, redactor: Redactor) -> list[str]:
    """The secrets config gives this upstream besides a static credential (read and added by StaticCredentials): a
    token exchange's client secret, the values of secret-named static `headers` (`X-Api-Key`, `Authorization`) and
    `env` entries of a stdio child (`GITHUB_TOKEN`: the only way to give one its key), with the token of a
    `<scheme> <token>` value on its own too, secret-named options and assignments of a stdio command (`--api-key KEY`,
    `-e GITHUB_TOKEN=KEY`), and the
    password of the upstream URL's user info. The gateway holds them as it holds a static key, so an upstream
    quoting one must not hand it to the agent; values under other names (`TZ`, `X-Region`, and names about a
    secret rather than of one: `TOKEN_URL`, `--token-limit`, Redactor.names_a_secret) are ordinary text."""
    found = [upstream.credentials.client_secret] if upstream.credentials.client_secret else []
    named = [(name, value) for name, value in upstream.headers.items()
             if name.lower() in CREDENTIAL_HEADERS or redactor.names_a_secret(name)]
    named += [(name, value) for name, value in upstream.env.items() if redactor.names_a_secret(name)]
    for _, value in named:
        found.append(value)
        scheme_and_token = value.split(None, 1)
        # `Bearer abc`, `Token abc`: not a Cookie's second `name=value`, whose first part is no scheme word.
        if len(scheme_and_token) == 2 and scheme_and_token[0].isalnum():
            found.append(scheme_and_token[1].strip())
    return found + _option_secrets(upstream.command or (), redactor) + _user_info_secrets(upstream.url)


def _option_secrets(command: tuple[str, ...], redactor: Redactor) -> list[str]:
    """The values of a stdio command's secret-named options (`--api-key KEY`, `--token=KEY`): how many stdio
    servers take their key when not from the environment; and of its secret-named assignments (`docker run -e
    GITHUB_TOKEN=KEY`, `--env=API_KEY=KEY`, `env OPENAI_API_KEY=KEY server`): how a container or a wrapper is
    handed one."""
    found, args = [], command[1:]
    for index, option in enumerate(args):
        following = args[index + 1] if index + 1 < len(args) else None
        if not option.startswith("-"):
            found += _assigned_secret(option, redactor)
            continue
        name, equals, value = option.lstrip("-").partition("=")
        # `--no-token` switches a secret off (argparse, click): what follows it is no value of it.
        if not redactor.names_a_secret(name) or name.lower().startswith(("no-", "no_")):
            found += _assigned_secret(value, redactor) if equals else []
            continue
        if equals:
            found.append(value)
        elif following is not None and not following.startswith("-"):
            found.append(following)
    return found


def _assigned_secret(argument: str, redactor: Redactor) -> list[str]:
    """The value of a `NAME=value` argument whose NAME names a secret (`GITHUB_TOKEN=KEY`), else nothing."""
    name, equals, value = argument.partition("=")
    return [value] if equals and value and redactor.names_a_secret(name) else []


def _user_info_secrets(url: str | None) -> list[str]:
    """The password of a URL's user info, and the HTTP Basic value the transport sends for it (as aiohttp encodes
    it): an upstream quoting the request it was sent would show either."""
    if not url or "@" not in url:
        return []
    try:
        parsed = yarl.URL(url)
    except ValueError:  # (config validation has refused it already)
        return []
    if not parsed.password:
        return []
    basic = aiohttp.BasicAuth(parsed.user or "", parsed.password).encode().split(" ", 1)[1]
    return [parsed.password, basic]


class CredentialService:
    """Composes the credential stage and its routes; owns their lifecycle."""

    def __init__(self, config: Config, *, http: aiohttp.ClientSession | None = None, redis: Any = None,
                 on_event: EventSink | None = None, redactor: Redactor | None = None,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time,
                 on_revocation: Outcome | None = None) -> None:
        """`redis`: a gateway.store.RedisConnection (or None for the in-memory store when `store: memory`).
        `on_revocation(upstream, outcome)`: each exchanged token's revocation at its authorization server."""
        self.config = config
        self.issuer = config.listen.resource_url
        upstreams = {u.name: u for u in config.upstreams}
        max_ttl = max([u.credentials.ttl_s for u in config.upstreams] + [60])
        retain_s = max_ttl + RETENTION_MARGIN_S
        self.redactor = redactor or Redactor(config.secrets)
        self.revocations = self._store(config, redis, retain_s, clock)
        # A retired key stays published while a token it signed may still be valid, plus a grace period.
        signed_ttl = max((u.credentials.ttl_s for u in config.upstreams if signer_needed_by(u)), default=0)
        self.keys = SigningKeys(config.signing, retain_s=signed_ttl + config.signing.retire_grace_s,
                                generate=generation_allowed(config), required=signer_needed(config), clock=clock)
        self._clock = clock
        self._keys_changed = asyncio.Event()
        self._key_task: asyncio.Task[None] | None = None
        self.minter = Minter(self.keys, self.issuer, self.revocations, clock=clock)
        self.exchanger = TokenExchanger(self.minter, http=http, clock=clock, on_revocation=on_revocation)
        self.tasks = TaskTracker(self.revocations, idle_s=config.tasks.idle_s, on_event=on_event, clock=clock,
                                 owed_for_s=retain_s)
        self.tasks.on_end(self.minter.forget_task)
        self.tasks.on_end(self.exchanger.forget_task)
        # Only minted tokens are on record (an exchanged one outlives its actor token's record, and stays good).
        self.tasks.on_reset(self.minter.forget_task)
        self.static = StaticCredentials(upstreams, environ=environ, on_secret=self.redactor.add_known)
        for upstream in config.upstreams:
            for secret in configured_secrets(upstream, self.redactor):
                self.redactor.add_known(secret)
        self.introspector = Introspector(self.keys, self.revocations, self.issuer, clock=clock)
        self.stage = CredentialStage(upstreams, self.minter, self.exchanger, self.tasks, self.static)

    @staticmethod
    def _store(config: Config, redis: Any, retain_s: float, clock: Callable[[], float]) -> RevocationStore:
        if isinstance(config.store, RedisStore):
            if redis is None:
                raise ValueError("store: redis is configured; pass the shared RedisConnection")
            return RedisRevocations(redis.client, prefix=redis.prefix, ended_ttl_s=retain_s, clock=clock)
        return MemoryRevocations(ended_ttl_s=retain_s, clock=clock)

    def routes(self) -> list[web.RouteDef]:
        return credential_routes(self.keys, self.introspector, self.issuer)

    async def start(self) -> None:
        await asyncio.to_thread(self.keys.load)  # file I/O and possibly key generation
        self.static.load()
        await self.exchanger.start()
        await self.tasks.start()
        self._key_task = asyncio.create_task(self._maintain_keys(), name="customs-signing-keys")

    async def close(self) -> None:
        if self._key_task is not None:
            self._key_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_task
        try:
            await self.tasks.close()  # ends every task: their credentials are revoked
        finally:
            await self.exchanger.close()

    async def _maintain_keys(self) -> None:
        """Rotate on schedule and withdraw retired keys on time; woken early when the ring changes."""
        while True:
            due = self.keys.next_due()
            delay = KEY_CHECK_MAX_S if due is None else min(max(due - self._clock(), 0.0), KEY_CHECK_MAX_S)
            await self._changed_or(delay)
            self._keys_changed.clear()
            try:
                removed = await asyncio.to_thread(self.keys.maintain)
            except Exception:  # a full disk or a vanished key_dir must not end rotation for good
                log.exception("signing key maintenance failed; retrying in %.0fs", KEY_CHECK_MAX_S)
                await self._changed_or(KEY_CHECK_MAX_S)
                continue
            if removed:
                log.info("retired signing keys withdrawn from the JWKS: %s", ", ".join(removed))

    async def _changed_or(self, delay: float) -> None:
        """Wait until the ring changes or `delay` passes. Not `wait_for`: on 3.11 it swallows a cancel that
        arrives as the event is set (a rotation or SIGHUP just before close), and close then never returns."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._keys_changed.wait()

    async def reload_keys(self) -> bool:
        """SIGHUP: pick up keys added to (or removed from) key_dir; the newest signs. Returns whether the
        published set changed; never raises (a failed reload keeps the loaded keys)."""
        try:
            changed = await asyncio.to_thread(self.keys.reload)
        except Exception:
            log.exception("signing keys: reloading %s failed; keeping the loaded keys", self.keys.key_dir)
            return False
        self._keys_changed.set()
        return changed

    async def session_ended(self, session_id: str, principal_key: str | None = None,
                            reason: str = "session_end") -> list[str]:
        """Call when an MCP session ends (DELETE, idle expiry; reason shutdown when the gateway stops):
        revokes its task's credentials."""
        return await self.tasks.session_ended(session_id, principal_key, reason)

    async def connect_headers(self, principal: Principal, upstream: str, task_id: str) -> dict[str, str]:
        """Credential header for an upstream session's set-up requests (initialize, listings)."""
        return await self.stage.connect_headers(principal, upstream, task_id)

    async def end_task(self, task_id: str, reason: str = "explicit", principal_key: str | None = None) -> list[str]:
        """`principal_key`: the task's owner, named in the revocation event even if this replica never saw the
        task (its calls went through another replica, or none was made)."""
        return await self.tasks.end_task(task_id, reason, principal_key)

    def rotate_keys(self) -> str:
        """Rotate the signing key now; returns the new kid (older keys stay published)."""
        kid = self.keys.rotate().kid
        self._keys_changed.set()
        return kid
