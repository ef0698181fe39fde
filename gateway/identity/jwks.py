"""Verification keys for one issuer: a JWKS file, a PEM file, or a JWKS URL (cached, rate-limited refetch).

Reading a document into keys (dropping symmetric and encryption keys) is verify_keys.py's. A JWKS URL is
fetched with a timeout and a response size bound; an unknown `kid` triggers at most one refetch per cool-down,
so a flood of forged kids cannot turn the gateway into a request amplifier against the IdP. A key file (JWKS or
PEM) is re-read as soon as it changed (a stat per verification), so a key taken out of it stops verifying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.identity.verify_keys import (
    FitCheck,
    KeySetError,
    VerifyKey,
    keys_from_jwks,
    keys_from_pem,
    select,
    unfit,
)

log = logging.getLogger("customs.identity.jwks")

MAX_JWKS_BYTES = 512 * 1024
FETCH_TIMEOUT_S = 5.0
UNKNOWN_KID_COOLDOWN_S = 30.0


class KeySource(Protocol):
    """Where an issuer's keys come from."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def candidates(self, kid: str | None) -> list[VerifyKey]: ...

    @property
    def generation(self) -> int: ...


class FileKeySource:
    """A JWKS or PEM file, read at construction; re-read whenever the file changed (a stat per verification), so
    key rotation by replacing the file needs no restart and takes effect with the first token of the new key, and
    a key removed from the file verifies no token after it.

    A local file needs no cool-down (unlike a URL, a miss costs one stat(), not a request to the IdP): a
    cool-down would refuse the new key for up to its length after start-up or after any forged kid. A
    changed file that cannot be used is tried again only once it changes again (or after the cool-down),
    so a flood of forged kids cannot make the gateway re-parse a broken file per token.
    """

    def __init__(self, path: Path, *, pem: bool, clock: Callable[[], float] = time.monotonic,
                 cooldown_s: float = UNKNOWN_KID_COOLDOWN_S, algorithms: Iterable[str] | None = None) -> None:
        self._path = path
        # The first read is checked by the first readiness probe: preflight (config check, serve) refuses it already.
        self._fit = FitCheck(algorithms, str(path))
        self._pem = pem
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._stamp = self._file_stamp()
        self._keys = self._read()
        self._generation = 0  # a count, not id(self._keys): CPython reuses a freed list's id
        self._failed: tuple[tuple[int, int, int], float] | None = None  # (stamp, when) of an unusable change

    def _file_stamp(self) -> tuple[int, int, int]:
        """What tells a replaced or rewritten file apart (inode for rename-into-place, ns mtime, size)."""
        try:
            st = self._path.stat()
        except OSError as exc:
            raise KeySetError(f"{self._path}: cannot read ({exc.strerror})") from exc
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> list[VerifyKey]:
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise KeySetError(f"{self._path}: cannot read ({exc.strerror})") from exc
        if self._pem:
            return keys_from_pem(data, str(self._path))
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise KeySetError(f"{self._path}: not valid JSON") from exc
        return keys_from_jwks(document, str(self._path))

    @property
    def generation(self) -> int:
        """Changes whenever the key set is replaced (cached verifications are then void), never back."""
        return self._generation

    @property
    def path(self) -> str:
        return str(self._path)

    def unfit_for(self, algorithms: Iterable[str]) -> str | None:
        """Why no key of the file can verify a token of any of `algorithms` (None: some key can)."""
        return unfit(self._keys, algorithms, str(self._path))

    def readiness(self) -> tuple[bool, str]:
        """Not ready when the file's key set fits none of the issuer's algorithms (every token refused). The file is
        checked here too: a rewrite waited for some token to be read, and was reported ready until then."""
        self._reload_if_changed()
        self._fit.check(self._keys)
        return (False, self._fit.problem) if self._fit.problem is not None else (True, "ok")

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def candidates(self, kid: str | None) -> list[VerifyKey]:
        # Checked for every token, not only one of an unknown kid: a key taken out of the file (compromised) must
        # stop verifying, and a replaced PEM file has no kid to miss. A stat costs ~1 µs beside 70-150 of the check.
        self._reload_if_changed()
        return select(self._keys, kid)

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._file_stamp()
        except KeySetError:
            stamp = (0, 0, 0)  # gone for now: logged by the read below, once per cool-down
        failed = self._failed
        if stamp == self._stamp or (failed is not None and failed[0] == stamp
                                    and self._clock() - failed[1] < self._cooldown_s):
            return
        try:
            self._keys, self._stamp, self._failed = self._read(), stamp, None
            self._generation += 1
            self._fit.check(self._keys)
        except KeySetError as exc:
            # Mid-rewrite or broken: keep the keys in use; this version is tried again after the cool-down.
            self._failed = (stamp, self._clock())
            log.warning("%s reload failed, keeping the previous keys: %s", "PEM key file" if self._pem else "JWKS file",
                        exc)


class UrlKeySource:
    """A JWKS URL: fetched at start (best effort), refreshed when older than `refresh_s`, and refetched on
    an unknown kid at most once per `cooldown_s`. Concurrent misses share one fetch."""

    def __init__(self, url: str, http: aiohttp.ClientSession | None, *, refresh_s: float,
                 cooldown_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_JWKS_BYTES,
                 algorithms: Iterable[str] | None = None) -> None:
        self.url = url
        self._fit = FitCheck(algorithms, url)
        self._http = http
        self._own_http = http is None
        self._refresh_s = refresh_s
        self._cooldown_s = min(UNKNOWN_KID_COOLDOWN_S, refresh_s) if cooldown_s is None else cooldown_s
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._keys: list[VerifyKey] = []
        self._generation = 0  # a count, not id(self._keys): CPython reuses a freed list's id
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None  # a refresh of stale keys in flight
        self.last_error: str | None = None  # of the last fetch, None once one succeeds

    def readiness(self) -> tuple[bool, str]:
        """Not ready while no key was ever fetched (every token would be refused): with the fetch's error.

        Without keys the probe also starts a fetch (within the cool-down, in the background): a replica that is
        not ready gets no traffic, so no token's unknown kid would ever fetch again once the IdP is back.
        """
        if self._keys and self._fit.problem is None:
            return True, "ok" if self.last_error is None else f"last good keys kept; refresh failed: {self.last_error}"
        if self._http is not None:
            self._refresh_in_background()
        if self._keys:  # keys, but none for the issuer's algorithms: as good as none
            failed = "" if self.last_error is None else f"; refresh failed: {self.last_error}"
            return False, f"{self._fit.problem}{failed}"
        return False, f"no keys from {self.url}: {self.last_error or 'not fetched yet'}"

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._refetch(force=False), name="customs-jwks")

    @property
    def generation(self) -> int:
        """Changes whenever the key set is replaced (cached verifications are then void), never back."""
        return self._generation

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        await self._refetch(force=True)
        if self.last_error is None:
            # A good fetch at start is no refetch: counted as one, a key rotated in just after start (a restart
            # during a rotation) was refused for a whole cool-down. The first unknown kid's refetch starts it; a
            # failed start still does (an IdP that is down is not asked again per token).
            self._attempted_at = None

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def settle(self) -> None:
        """Wait for a background refresh in flight (nothing on the call path waits for one)."""
        if self._background is not None:
            await asyncio.shield(self._background)

    async def candidates(self, kid: str | None) -> list[VerifyKey]:
        found = select(self._keys, kid)
        # A kid no key is published under is unknown, though a kid-less key (which matches any kid) is in the set:
        # it did not count as one, so a key the IdP rotated in beside a kid-less key was refused until the keys aged.
        if found and (kid is None or any(key.kid == kid for key in found)):
            if self._fetched_at is None or self._clock() - self._fetched_at >= self._refresh_s:
                # Refresh behind the token, not in front of it: a slow IdP (up to the fetch timeout) would
                # otherwise hold up every new token, and a failed refresh keeps these keys anyway.
                self._refresh_in_background()
            return found
        await self._refetch(force=False)
        return select(self._keys, kid)

    async def _refetch(self, *, force: bool) -> None:
        before = self._attempted_at
        async with self._lock:
            if self._attempted_at != before:
                return  # another request fetched while this one waited for the lock
            if not force and self._attempted_at is not None and \
                    self._clock() - self._attempted_at < self._cooldown_s:
                return
            self._attempted_at = self._clock()
            try:
                self._keys = keys_from_jwks(await self._download(), self.url)
                self._generation += 1
                self._fetched_at = self._clock()
                self._fit.check(self._keys)
            except (KeySetError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # Keep serving the last good keys: an IdP outage must not log every agent out.
                self.last_error = str(exc) or type(exc).__name__
                log.warning("JWKS fetch from %s failed: %s", self.url, self.last_error)
            else:
                self.last_error = None

    async def _download(self) -> Any:
        if self._http is None:
            raise KeySetError(f"{self.url}: key source not started")
        async with self._http.get(self.url, timeout=self._timeout, allow_redirects=False,
                                  headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise KeySetError(f"{self.url}: HTTP {response.status}")
            if response.content_length is not None and response.content_length > self._max_bytes:
                raise KeySetError(f"{self.url}: JWKS larger than {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self._max_bytes:
                    raise KeySetError(f"{self.url}: JWKS larger than {self._max_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # nesting past the parser's limit is no JWKS either
            raise KeySetError(f"{self.url}: not valid JSON") from exc

    @property
    def stats(self) -> Mapping[str, Any]:
        return {"keys": len(self._keys), "fetched_at": self._fetched_at}
