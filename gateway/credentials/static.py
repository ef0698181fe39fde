"""Static upstream credentials: a header value read from an environment variable or a file, never logged.

The value is read at start-up and, for files, re-read when the file changes (mounted secrets rotate
in place). A missing value does not stop the gateway; calls to that upstream fail with
`credential_unavailable` and the log names the variable or file, never a value.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError

log = logging.getLogger("customs.credentials.static")

# What no HTTP header value may hold (RFC 9110 §5.5): aiohttp refuses to send it, and the call failed as internal_error.
_NOT_IN_A_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class _Entry:
    value: str | None
    mtime_ns: int | None = None


class StaticCredentials:
    """Holds the static header values of the upstreams configured with `mode: static`."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig], *,
                 environ: Mapping[str, str] | None = None,
                 on_secret: Callable[[str], None] | None = None) -> None:
        self._upstreams = {n: u for n, u in upstreams.items() if u.credentials.mode == "static"}
        self._environ = environ
        self._on_secret = on_secret  # e.g. Redactor.add_known: the exact value is masked in logs
        self._values: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"StaticCredentials(upstreams={sorted(self._upstreams)})"

    def load(self) -> None:
        for name, upstream in self._upstreams.items():
            self._values[name] = self._read(upstream, None)

    def _read(self, upstream: UpstreamConfig, previous: _Entry | None) -> _Entry:
        creds = upstream.credentials
        if creds.value_env:
            environ = self._environ if self._environ is not None else os.environ
            value = environ.get(creds.value_env)
            if not value:
                log.warning("upstream %s: environment variable %s is not set", upstream.name, creds.value_env)
            return self._remember(_Entry(_header_safe(value, upstream.name, f"environment variable {creds.value_env}")))
        assert creds.value_file is not None
        try:
            stat = creds.value_file.stat()
            if previous is not None and previous.mtime_ns == stat.st_mtime_ns:
                return previous
            value = creds.value_file.read_text().strip()
        except OSError as exc:
            log.warning("upstream %s: cannot read credential file %s: %s", upstream.name, creds.value_file,
                        type(exc).__name__)
            return _Entry(None)
        except UnicodeDecodeError:  # (its repr holds the file's bytes: never logged)
            log.warning("upstream %s: credential file %s is not UTF-8 text", upstream.name, creds.value_file)
            return _Entry(None, stat.st_mtime_ns)
        if not value:
            log.warning("upstream %s: credential file %s is empty", upstream.name, creds.value_file)
        value = _header_safe(value, upstream.name, f"credential file {creds.value_file}")
        return self._remember(_Entry(value or None, stat.st_mtime_ns))

    def _remember(self, entry: _Entry) -> _Entry:
        if entry.value and self._on_secret is not None:
            self._on_secret(entry.value)
        return entry

    def header(self, upstream: str) -> tuple[str, str]:
        """(header name, header value) for `upstream`, or GatewayError("credential_unavailable")."""
        config = self._upstreams.get(upstream)
        if config is None:
            raise GatewayError("credential_unavailable")
        entry = self._values.get(upstream)
        if config.credentials.value_file is not None or entry is None:
            entry = self._values[upstream] = self._read(config, entry)
        if not entry.value:
            raise GatewayError("credential_unavailable")
        return config.credentials.header, config.credentials.value_prefix + entry.value


def _header_safe(value: str | None, upstream: str, source: str) -> str | None:
    """`value`, or None (logged, naming `source`, never the value) when no header can carry it."""
    if value and _NOT_IN_A_HEADER.search(value):
        log.warning("upstream %s: %s holds a line break or another control character, which no HTTP header "
                    "value may", upstream, source)
        return None
    return value
