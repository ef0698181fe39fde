"""Static upstream credentials: a header value read from an environment variable or a file, never logged.

The value is read at start-up and, for files, re-read when the file changes (mounted secrets rotate
in place). A missing value does not stop the gateway; calls to that upstream fail with
`credential_unavailable` and the log names the variable or file, never a value.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
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
        entry, problem = read_value(upstream, self._environ, previous)
        if problem is not None:
            log.warning("upstream %s: %s", upstream.name, problem)
        return entry if entry is previous else self._remember(entry)  # an unchanged file: known already

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


def read_value(upstream: UpstreamConfig, environ: Mapping[str, str] | None = None,
               previous: _Entry | None = None) -> tuple[_Entry, str | None]:
    """The upstream's static value as serve reads it, and why it cannot be used (naming the variable or file,
    never the value), or None. `customs config check` warns with the same words (gateway/preflight.py)."""
    creds = upstream.credentials
    if creds.value_env:
        value = (environ if environ is not None else os.environ).get(creds.value_env)
        if not value:
            return _Entry(None), f"environment variable {creds.value_env} is not set"
        return _header_safe(_Entry(value), f"environment variable {creds.value_env}")
    assert creds.value_file is not None
    try:
        stat = creds.value_file.stat()
        if previous is not None and previous.mtime_ns == stat.st_mtime_ns:
            return previous, None
        value = creds.value_file.read_text().strip()
    except OSError as exc:
        return _Entry(None), f"cannot read credential file {creds.value_file}: {type(exc).__name__}"
    except UnicodeDecodeError:  # (its repr holds the file's bytes: never logged)
        return _Entry(None, stat.st_mtime_ns), f"credential file {creds.value_file} is not UTF-8 text"
    if not value:
        return _Entry(None, stat.st_mtime_ns), f"credential file {creds.value_file} is empty"
    return _header_safe(_Entry(value, stat.st_mtime_ns), f"credential file {creds.value_file}")


def _header_safe(entry: _Entry, source: str) -> tuple[_Entry, str | None]:
    """`entry`, or one without its value (and why, naming `source`, never the value) when no header can carry it."""
    if entry.value and _NOT_IN_A_HEADER.search(entry.value):
        return (_Entry(None, entry.mtime_ns),
                f"{source} holds a line break or another control character, which no HTTP header value may")
    return entry, None


def static_warnings(upstreams: Sequence[UpstreamConfig], environ: Mapping[str, str] | None = None) -> list[str]:
    """What serve would warn about reading each static value (the upstream's every call then refused
    credential_unavailable), at the config path of the variable or file."""
    warnings: list[str] = []
    for index, upstream in enumerate(upstreams):
        creds = upstream.credentials
        if creds.mode != "static":
            continue
        _, problem = read_value(upstream, environ)
        if problem is not None:
            key = "value_env" if creds.value_env else "value_file"
            warnings.append(f"upstreams[{index}].credentials.{key}: {problem}: every call to upstream "
                            f"{upstream.name} is refused (credential_unavailable) until it is")
    return warnings
