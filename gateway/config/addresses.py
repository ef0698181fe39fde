"""Host and origin values in listen: how a URL writes a host, and which allow-list entries can match at all.

A Host header is `host[:port]` and a browser's Origin is `scheme://host[:port]`; an allow-list entry of
another shape (a URL among the hosts, a bare host among the origins) matches no request, so every request
would get 403 while the config looked valid. Such entries are refused with their path instead.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# A DNS name or IPv4 address (letters, digits, '-', '.', '_'), or a bracketed IPv6 literal; then an optional port.
_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$")


_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def listen_host(value: str) -> str:
    """listen.host (and `serve --host`): an IP address (IPv6 without brackets) or a name, or "" for every interface.
    A URL, a `host:port` or `[::1]` passed, and serve stopped with a traceback building its own URL from it."""
    if value and _NAME.fullmatch(value) is None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not a host to listen on: {value!r} (an address or name, e.g. 127.0.0.1, ::1 or "
                             "0.0.0.0; no scheme, port or brackets: the port is listen.port)") from None
    return value


def url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 literal in brackets (`http://[::1]:8700`, never `http://::1:8700`)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_host(value: str) -> str:
    """An allowed_hosts entry: `*`, or a Host header's `host[:port]` (the port is not compared)."""
    match = _HOST.match(value)
    if value != "*" and (match is None or int(match.group(1) or 0) > 65535):
        raise ValueError(f"not a host: {value!r} (write it as a Host header does: customs.example or "
                         "customs.example:8443, [::1] for IPv6; no scheme or path; '*' = any)")
    return value


def allowed_origin(value: str) -> str:
    """An allowed_origins entry: `*`, or an origin `http(s)://host[:port]` as browsers send it (a trailing / is
    tolerated)."""
    if value == "*":
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/")
            or parts.query or parts.fragment or "@" in parts.netloc or (port is not None and port > 65535)
            or _HOST.match(parts.netloc) is None):
        raise ValueError(f"not an origin: {value!r} (an Origin header is scheme://host[:port], e.g. "
                         "https://app.example, with no path or wildcard; '*' = any)")
    return value
