"""HTTP-only guards: Host and Origin checks (DNS rebinding), bounded bodies, content negotiation."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from aiohttp import compression_utils, hdrs, web
from aiohttp.http import HttpVersion11

from gateway.config.model import ListenConfig
from gateway.errors import GatewayError, to_wire
from gateway.http.cors import ORIGIN as CORS
from gateway.http.cors import add as add_cors
from gateway.http.cors import cors_origin, preflight
from gateway.jsonrpc import dumps
from gateway.keys import CONFIG
from gateway.transport.events import media_type

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# For routes served outside `create_app` (no config on the application): the configuration default.
DEFAULT_BODY_TIMEOUT_S: float = ListenConfig.model_fields["body_timeout_s"].default
DEFAULT_MAX_BODY_BYTES: int = ListenConfig.model_fields["max_body_bytes"].default
T = TypeVar("T")
REFUSED = web.ResponseKey("customs.refused", str)  # on a response error_response built: the reason (metric)
UNREADABLE = web.RequestKey("customs.unreadable_body", bool)  # its body could not be decoded: close the connection
# The content codings aiohttp decodes in this process (br and zstd only with their optional modules, which are no
# dependency of the gateway), named by a 415's Accept-Encoding (RFC 9110 §12.5.3); none (identity) always reads.
DECODED_CODINGS = ("gzip", "deflate", *(("br",) if compression_utils.HAS_BROTLI else ()),
                   *(("zstd",) if compression_utils.HAS_ZSTD else ()))


AGENT_PATHS = ("/mcp", "/sse", "/messages")  # the MCP endpoints: every refusal there is a JSON-RPC error
API_PATHS = ("/api/",)  # the approvals and tool-pin APIs: their refusals are `{"error": {"reason", "message"}}`


def error_response(exc: BaseException, request_id: object = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body, status = to_wire(exc, request_id)
    extra = dict(exc.headers) if isinstance(exc, GatewayError) else {}
    response = web.Response(body=dumps(body), status=status, content_type="application/json",
                            headers={**(headers or {}), **extra})
    response[REFUSED] = exc.reason if isinstance(exc, GatewayError) else type(exc).__name__
    return response


def _api_error(exc: GatewayError) -> web.Response:
    """A refusal on the approvers' and operators' JSON APIs, in their own error shape (docs/approvals.openapi.yaml:
    `{"error": {"reason", "message"}}`) rather than the MCP endpoints' JSON-RPC error, which their clients cannot
    read (no `error.reason`)."""
    response = web.json_response({"error": {"reason": exc.reason, "message": exc.message}}, status=exc.http_status,
                                 headers=dict(exc.headers))
    response[REFUSED] = exc.reason
    return response


def _host_only(value: str) -> str:
    """The host of a Host header or a config entry, lower-case, without its port; an IPv6 literal always in
    brackets, as a Host header writes it (`urlsplit(public_url).hostname` has none: it never matched the
    `[fd00::5]:8700` a client sends)."""
    value = value.strip().lower()
    if value.startswith("[") and "]" in value:
        host, rest = value[: value.find("]") + 1], value[value.find("]") + 1:]
    elif value.count(":") > 1:
        return f"[{value}]"
    else:
        host, colon, tail = value.partition(":")
        rest = colon + tail
    # uri-host [":" port] (RFC 9110 §7.2), port = *DIGIT: a tail that is no port ("…:8700@evil") is no host of ours.
    port = rest[1:]
    if rest and (rest[0] != ":" or not (port == "" or (port.isascii() and port.isdigit()))):
        return ""
    return host


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _origin(value: str) -> str:
    """An origin as browsers send it: `scheme://host[:port]`, lower-case, without the scheme's default port
    (a public_url or allowed_origins entry may write `https://x:443`; the browser's Origin is `https://x`)."""
    scheme, sep, rest = value.strip().rstrip("/").lower().partition("://")
    if not sep:
        return value.strip().lower()
    host, colon, port = rest.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        rest = host
    return f"{scheme}://{rest}"


class HostOriginPolicy:
    """Which Host and Origin values the gateway answers (the rest get 403)."""

    def __init__(self, listen: ListenConfig) -> None:
        public = urlsplit(listen.resource_url)
        hosts = set(listen.allowed_hosts) or {public.hostname or "", *LOCAL_HOSTS}
        self._hosts = {_host_only(h) for h in hosts if h}
        self._any_host = "*" in listen.allowed_hosts
        self._origins = {_origin(o) for o in listen.allowed_origins} | {_origin(f"{public.scheme}://{public.netloc}")}
        self._any_origin = "*" in listen.allowed_origins
        self._listed: dict[str, bool] = {}  # Host header value → listed (clients send the same few)

    def check(self, headers: Mapping[str, str]) -> None:
        host = headers.get("Host", "")
        listed = self._listed.get(host)
        if listed is None:
            if len(self._listed) >= 256:  # bounded whatever Host values clients make up
                self._listed.clear()
            listed = self._listed[host] = _host_only(host) in self._hosts
        if not self._any_host and not listed:
            raise GatewayError("host_forbidden")
        origin = headers.get("Origin")
        if origin is None or self._any_origin:
            return
        origin = _origin(origin)
        scheme = origin.partition("://")[0]
        # A page the gateway served on a listed Host (localhost beside public_url's 127.0.0.1) posts with its own
        # origin: same host and port, not a rebinding. Never under allowed_hosts "*", where any name is "ours".
        same_origin = listed and origin == _origin(f"{scheme}://{host}")
        if origin not in self._origins and not same_origin:
            raise GatewayError("origin_forbidden")


def guard_middleware(policy: HostOriginPolicy, refused: Callable[[str, int], None] | None = None,
                     ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The Host/Origin check before every route; `refused(reason, status)` is told of each request the MCP
    edge refused before any call was made (those have no span and no decision record to show them)."""
    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        request[UNREADABLE] = False  # read below: a missing key would cost a raised KeyError on every request
        headers = request.headers
        try:
            policy.check(headers)
        except GatewayError as exc:
            api = request.path.startswith(API_PATHS)
            response: web.StreamResponse = _api_error(exc) if api else error_response(exc)
        else:
            origin = cors_origin(headers, request.path)  # an allowed origin on an agent path: answers shared with it
            try:
                if origin is None:
                    response = await handler(request)
                else:
                    request[CORS] = origin
                    response = preflight(request, origin) or await _shared(handler, request, origin)
            except web.HTTPMethodNotAllowed as exc:  # on an MCP path a JSON-RPC error, as every refusal there
                _drop_unread_coded_body(request, exc)
                if not request.path.startswith(AGENT_PATHS):
                    raise
                response = error_response(GatewayError("method_not_allowed"), headers={"Allow": exc.headers["Allow"]})
                if origin is not None:
                    add_cors(response, origin)
            except web.HTTPException as exc:  # aiohttp's 404 …: answered once this returns
                _drop_unread_coded_body(request, exc)
                raise
        if request[UNREADABLE] and not response.prepared:
            response.force_close()  # the rest of that body is still on the wire: this connection cannot go on
        if response.status >= 400:
            if not response.prepared and not request.content.is_eof():
                _refused_unread(request, response)
            if refused is not None and REFUSED in response:
                refused(response[REFUSED], response.status)
        _drop_unread_coded_body(request, response)
        return response
    return guard


def _refused_unread(request: web.Request, response: web.StreamResponse) -> None:
    """A refusal answered before the body arrived in full. aiohttp would read and throw away the rest for up to
    10 s (its lingering read) before the connection is free: for an oversized body (413, or a Content-Length over
    listen.max_body_bytes refused earlier, 401 …), a chunked one of no announced size, a trickled one (408), or one
    the client holds back waiting for `100 Continue` (never sent: read_body), the connection is closed instead
    (RFC 9110 §15.5.14). Any other body (within the limit, still arriving) is read as aiohttp does, keeping the
    connection: closing with unread data makes TCP reset it, and a client still sending could lose the answer."""
    length = request.content_length
    config = request.config_dict.get(CONFIG)
    limit = config.listen.max_body_bytes if config is not None else DEFAULT_MAX_BODY_BYTES
    if response.status in (408, 413) or length is None or length > limit or hdrs.EXPECT in request.headers:
        request.protocol.close()  # aiohttp drops what still arrives on the connection (data_received) ...
        request.content.feed_eof()  # ... and does not wait for the rest after the answer
        response.force_close()  # Connection: close


def _drop_unread_coded_body(request: web.Request, response: web.StreamResponse) -> None:
    """A compressed body the answer left unread (refused first: type, origin, route, session): aiohttp would read
    and decode the rest after the answer, and one that does not decode failed there, an `Unhandled exception`
    logged at ERROR for any client to cause. Dropped instead, and the connection closed, as for a body the
    gateway failed to read itself."""
    if "Content-Encoding" in request.headers and not request.content.is_eof():
        request.content.feed_eof()
        response.force_close()


async def _shared(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request,
                  origin: str) -> web.StreamResponse:
    """The handler's answer to an allowed origin's request, with the CORS headers (a stream has them already)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404, 405, ...: answered by aiohttp after this returns
        add_cors(exc, origin)
        raise
    if not response.prepared:
        add_cors(response, origin)
    return response


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all, and a body that does not
    arrive in full within `timeout_s` (a client trickling bytes holds a connection and a handler)."""
    if request.content.is_eof():  # the usual small body came with the headers: no timer needed
        return await _read_body(request, limit)
    if hdrs.EXPECT in request.headers:  # the client waits for 100 Continue to send it (expect_body_later)
        await _continue(request, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise GatewayError("body_timeout") from None


async def expect_body_later(request: web.Request) -> None:
    """The MCP endpoints' `Expect` handler (it runs before any middleware): `100 Continue` is sent once the
    handler is about to read the body (read_body), not as the headers arrive (aiohttp's default). A request refused
    before its body is read (Host/Origin 403, 415, 406, 401, a Content-Length over listen.max_body_bytes 413) is
    answered without it, so an honest client does not upload a body only to have it thrown away (RFC 9110
    §10.1.1). Another expectation is refused 417, as aiohttp's default refuses it."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")


async def _continue(request: web.Request, limit: int) -> None:
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError("body_too_large")  # without 100 Continue: the body is never sent
    if request.version == HttpVersion11:  # (HTTP/1.0 has no 100 Continue: aiohttp's default sends none either)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response's own size, as aiohttp's default handler keeps it


async def timed_read(request: web.Request, read: Callable[[], Awaitable[T]]) -> T:
    """One of aiohttp's own body reads (`request.post`, `request.json`; bounded by the application's
    `client_max_size`) under `listen.body_timeout_s`, for the routes outside /mcp. Raises
    GatewayError("body_timeout"); each API maps it to its own error shape."""
    if request.content.is_eof():
        return await _bounded(request, read)
    config = request.config_dict.get(CONFIG)
    timeout_s = config.listen.body_timeout_s if config is not None else DEFAULT_BODY_TIMEOUT_S
    try:
        async with asyncio.timeout(timeout_s):
            return await _bounded(request, read)
    except TimeoutError:
        raise GatewayError("body_timeout") from None


async def _bounded(request: web.Request, read: Callable[[], Awaitable[T]]) -> T:
    """aiohttp's read refusing more than `client_max_size` (`listen.max_body_bytes`) as GatewayError
    ("body_too_large"). Its own refusal is a text/plain 413; it is what a compressed body (Content-Encoding
    gzip/deflate/br, inflated by aiohttp as it reads) meets, whose Content-Length is under the limit.
    A body aiohttp cannot decode (corrupt gzip, broken chunked framing) is GatewayError("parse_error"): it
    used to escape every handler as an unhandled exception (text/plain 500, a traceback logged at ERROR). Its
    stream is ended here, so aiohttp does not read the rest after the answer (that read failed again, logged at
    ERROR), and the answer closes the connection (guard_middleware)."""
    try:
        return await read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError("body_too_large") from None
    except web.RequestPayloadError:
        request[UNREADABLE] = True
        request.content.feed_eof()
        raise GatewayError("parse_error", "Parse error: the body could not be decoded") from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length  # (a property parsing the header: read once)
    if length is not None:
        if length > limit:
            raise GatewayError("body_too_large")
        # Content-Length framing bounds what aiohttp reads: one read, no per-chunk iteration. A compressed
        # body inflates past its Content-Length: aiohttp's own limit (client_max_size) refuses it then.
        return await _bounded(request, request.read)
    chunks: list[bytes] = []

    async def read_chunks() -> None:
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise GatewayError("body_too_large")
            chunks.append(chunk)

    await _bounded(request, read_chunks)
    return b"".join(chunks)


def coding_refused() -> GatewayError:
    """The refusal of a body in a content coding the gateway does not decode: 415 (RFC 9110 §15.5.16), with the
    codings it does decode in Accept-Encoding."""
    accepted = ", ".join(DECODED_CODINGS)
    return GatewayError("unsupported_media_type", f"Content-Encoding not supported (accepted: {accepted}, or none)",
                        headers={"Accept-Encoding": accepted})


def undecoded_coding(request: web.Request) -> GatewayError | None:
    """`coding_refused()` for a body that did not parse and came in a coding aiohttp passed on undecoded (one it
    does not know, `x-gzip`, or several, `gzip, br`); None when it was decoded, or came in none. Error path only:
    what aiohttp did not decode is found from the header as aiohttp reads it."""
    coding = request.headers.get("Content-Encoding", "").strip()
    if coding.isascii() and coding.lower() in ("", "identity", *DECODED_CODINGS):
        return None
    return coding_refused()


def require_json(request: web.Request) -> None:
    if media_type(request.headers.get("Content-Type")) != "application/json":
        raise GatewayError("unsupported_media_type")


def accepts(request: web.Request) -> tuple[bool, bool]:
    """(accepts JSON, accepts SSE). A missing Accept header accepts JSON. Media ranges count as HTTP
    defines them (`*/*`, `application/*`, `text/*`), as the SDK's own server reads them."""
    accept = request.headers.get("Accept")
    return _accepted(accept) if accept else (True, False)


@functools.lru_cache(maxsize=64)  # clients send the same few values: parsed once each
def _accepted(accept: str) -> tuple[bool, bool]:
    weights: dict[str, float] = {}  # media range -> its q (RFC 9110 §12.4.2; 1 when not given)
    for part in accept.split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 1.0
        weights[media] = weight
    return _admits(weights, "application/json"), _admits(weights, "text/event-stream")


def _admits(weights: dict[str, float], media: str) -> bool:
    """Whether the most specific range naming `media` admits it: q=0 is "not acceptable" (RFC 9110 §12.5.1), so
    `*/*, text/event-stream;q=0` refuses SSE."""
    for candidate in (media, media.split("/")[0] + "/*", "*/*"):
        if candidate in weights:
            return weights[candidate] > 0
    return False
