"""The span exporter child process: frames of finished spans in on stdin, OTLP/HTTP requests out (span_export.py is
the gateway's side).

Started as `python -m gateway.telemetry.exporter_main`; its first frame is its config. It encodes the spans of each
frame it reads (up to MAX_BATCH a request) with `otlp_encode.OtlpEncoder`, POSTs each request (`OtlpPoster`), and
reports each on its stdout (`done N` / `lost N`; `flushed K` once everything before a flush frame is exported).
"""

from __future__ import annotations

import gzip
import logging
import marshal
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from gateway.telemetry.child_pipe import settle_heap
from gateway.telemetry.span_export import FRAME, MAX_BATCH
from gateway.telemetry.spans import SCOPE, WireSpan, clipped

if TYPE_CHECKING:  # imported where used: the gateway's process never encodes
    from gateway.telemetry.otlp_encode import OtlpEncoder

log = logging.getLogger("customs.telemetry")

# What the SDK's OTLP/HTTP exporter retries (with backoff, within its timeout) and how often at most.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 10.0


class OtlpPoster:
    """POSTs serialized OTLP trace requests the way the SDK's `OTLPSpanExporter` does.

    Not through that exporter: it only takes SDK spans (building and encoding those is the cost this
    process avoids), and the part of it that POSTs bytes (`_OTLPHTTPClient`, reachable only as the
    private `exporter._client`) is private and has been reorganised across releases. `requests`, a
    dependency of the exporter package, is a stable public API. Replicated from the exporter:
    Content-Type application/x-protobuf, the configured headers, no redirects, 2xx/3xx as success, up
    to 6 attempts with exponential backoff (1, 2, 4… s, ±20 %) or Retry-After on 429/502/503/504 and
    connection errors, all within the timeout; its OTEL_EXPORTER_OTLP_[TRACES_]{TIMEOUT, COMPRESSION,
    CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY} variables. A failure is logged, never raised.
    """

    def __init__(self, endpoint: str, headers: Mapping[str, str], env: Mapping[str, str]) -> None:
        import requests

        self._endpoint = endpoint
        self._transient = (requests.ConnectionError, requests.Timeout)
        self._fatal = requests.exceptions.SSLError  # a ConnectionError that no retry mends (an untrusted certificate)
        self._timeout = _seconds(_otlp_env(env, "TIMEOUT")) or DEFAULT_TIMEOUT_S
        self._compression = (_otlp_env(env, "COMPRESSION") or "none").strip().lower()
        self._session = session = requests.Session()
        session.headers.update({"Content-Type": "application/x-protobuf",
                                "User-Agent": f"customs/{SCOPE.version} (OTLP span exporter)"})
        if self._compression in ("gzip", "deflate"):
            session.headers["Content-Encoding"] = self._compression
        session.headers.update(headers)
        # What requests reads from the environment on every request (proxies, NO_PROXY, netrc, CA bundle), read
        # once: a process's environment does not change under it. And in the SDK exporter's order: its certificate
        # first, then REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. Left to requests, those variables override a session's
        # `verify` (psf/requests#3829): a collector behind a private CA was refused wherever they were set.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(endpoint)
        session.verify = _otlp_env(env, "CERTIFICATE") or env.get("REQUESTS_CA_BUNDLE") or \
            env.get("CURL_CA_BUNDLE") or True
        if (auth := requests.utils.get_netrc_auth(endpoint)) is not None:
            session.auth = auth
        cert, key = _otlp_env(env, "CLIENT_CERTIFICATE"), _otlp_env(env, "CLIENT_KEY")
        if cert:
            session.cert = (cert, key) if key else cert

    def post(self, body: bytes, spans: int) -> bool:
        """POST one request, retrying transient failures. False (and logged) when the spans are lost."""
        data = self._compress(body)
        deadline = time.monotonic() + self._timeout
        for attempt in range(MAX_ATTEMPTS):
            retry_after: float | None = None
            try:
                response = self._session.post(self._endpoint, data=data, allow_redirects=False,
                                              timeout=max(deadline - time.monotonic(), 0.001))
            except self._fatal as exc:
                problem, retryable = str(exc), False
            except self._transient as exc:
                problem, retryable = str(exc), True
                # The SDK retries a first connection error at once: usually a stale pooled connection.
                retry_after = 0.0 if attempt == 0 else None
            except Exception as exc:  # a malformed URL, an unreadable certificate: no retry helps
                problem, retryable = str(exc), False
            else:
                if 200 <= response.status_code < 400:
                    return True
                problem = f"HTTP {response.status_code} {response.reason}"
                retryable = response.status_code in RETRYABLE_STATUS
                retry_after = _seconds(response.headers.get("retry-after"))
            backoff = retry_after if retry_after is not None else 2 ** attempt * random.uniform(0.8, 1.2)
            if not retryable or attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                log.error("span export to %s failed (%s): %d spans lost", self._endpoint, problem, spans)
                return False
            log.warning("span export to %s: %s; retrying in %.1f s", self._endpoint, problem, backoff)
            time.sleep(backoff)
        return False

    def _compress(self, body: bytes) -> bytes:
        if self._compression == "gzip":
            return gzip.compress(body)
        if self._compression == "deflate":
            return zlib.compress(body)
        return body

    def close(self) -> None:
        self._session.close()


def _otlp_env(env: Mapping[str, str], name: str) -> str | None:
    """An exporter variable, the traces-specific one first (the SDK's precedence)."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or None


def _seconds(raw: str | None) -> float | None:
    """A number of seconds (a timeout, a Retry-After) or None if `raw` is not one."""
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return max(value, 0.0) if value is not None and math.isfinite(value) else None


def _export(encoder: OtlpEncoder, poster: OtlpPoster, spans: list[WireSpan]) -> bool:
    """Encode and POST one batch; False when its spans are lost."""
    try:
        body = encoder.serialize(spans)
    except Exception as exc:  # as the SDK's exporter: a batch that cannot be encoded is lost, logged, not fatal
        log.error("%d spans not encodable (%s): lost", len(spans), exc)
        return False
    return poster.post(body, len(spans))


def _read_frame(stream: BinaryIO) -> Any:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    return marshal.loads(stream.read(size))  # our own parent (the same interpreter), over a private pipe


def main() -> None:
    """The exporter child: read frames from stdin until EOF, encode each batch and POST it."""
    from gateway.telemetry.otlp_encode import OtlpEncoder

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = _read_frame(stdin)
    if first is None or first[0] != "config":
        return
    config = first[1]
    encoder = OtlpEncoder(config["resource"])
    limit: int | None = config.get("value_limit")  # cut here: the event loop never pays for it
    poster = OtlpPoster(config["endpoint"], config["headers"] or {}, os.environ)
    settle_heap()
    try:
        while (message := _read_frame(stdin)) is not None:
            kind, body = message
            if kind == "spans":
                if limit is not None:
                    body = [clipped(span, limit) for span in body]
                for start in range(0, len(body), MAX_BATCH):
                    batch = body[start:start + MAX_BATCH]
                    # The parent counts what is lost, and what this process held if it dies.
                    outcome = "done" if _export(encoder, poster, batch) else "lost"
                    stdout.write(f"{outcome} {len(batch)}\n".encode())
                    stdout.flush()
            elif kind == "flush":
                stdout.write(f"flushed {body}\n".encode())
                stdout.flush()
    finally:
        poster.close()
