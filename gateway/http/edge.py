"""The answers aiohttp's HTTP parser has the gateway make before any route or middleware runs: a body in a content
coding it refuses (br or zstd without their modules), and a request it cannot parse (a header longer than the
gateway reads, a malformed head): a text/plain 400 saying what was wrong, logged at INFO by kind only, never with
the refused bytes (aiohttp's own answer quoted them, and logged them at ERROR with a traceback: a cookie, an API
key or a URL's `?access_token=` reached the log).

aiohttp makes those answers for a request of its own (`handle_error` on a stand-in: path `/`, no headers), so the
guard never sees the real one. Its head is found again in the bytes the parser stopped in, on that error path only,
and an answer to an allowed origin on an agent path names it as the guard names it on every other answer
(cors.py); a refused Host or Origin, or another path, gets no CORS headers. aiohttp's answer to an exception that
escaped a handler (a text/plain 500, a 504 for a TimeoutError) is made here too, for the real request: it names
the origin the guard recorded on it (`cors.ORIGIN`: an allowed origin on an agent path), and no other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from types import FunctionType
from typing import ClassVar, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import GatewayError
from gateway.http.cors import ORIGIN as CORS_ORIGIN
from gateway.http.cors import add as add_cors
from gateway.http.cors import cors_origin
from gateway.http.guards import REFUSED, HostOriginPolicy, coding_refused, error_response

log = logging.getLogger("customs.http")
# The method that feeds each read to aiohttp's parser and catches its refusal: its frame is in that error's traceback.
_DATA_RECEIVED = cast(FunctionType, RequestHandler.data_received).__code__
_REQUEST_LINE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+ (\S+) HTTP/\d\.\d")
# What the answer to a request the parser refused says, by the parser's exception (most specific first): never the
# exception's own message, which quotes the refused bytes (a cookie, an API key, a URL's ?access_token=).
_UNREADABLE = ((LineTooLong, "a request line or header field is longer than the gateway reads"),
               (BadHttpMethod, "the request method is malformed"), (BadStatusLine, "the request line is malformed"),
               (InvalidHeader, "a header field is malformed"))


def _stopped_in(exc: BaseException) -> bytes:
    """The bytes aiohttp's parser stopped in when it raised `exc`: the `data` of the connection handler's
    `data_received(data)`, which caught it (b"" when that frame is not in the traceback)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _DATA_RECEIVED:
            data = tb.tb_frame.f_locals.get("data")
            return bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b""
        tb = tb.tb_next
    return b""


def _head(chunk: bytes) -> tuple[str, CIMultiDict[str]] | None:
    """The target and headers of the request head `chunk` begins with, when it ends in `chunk` too: a browser
    sends one request at a time, its head in one piece. None for anything else (a head split across reads)."""
    head, end, _ = chunk.partition(b"\r\n\r\n")
    if not end:
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers.add(name, value.strip(" \t"))
    return match.group(1), headers


def refused_request_origin(policy: HostOriginPolicy, exc: BaseException) -> str | None:
    """The origin the answer to a request aiohttp's parser refused with `exc` is shared with, as the guard would
    share it (Host and Origin allowed, an agent path); None when not, or when that request's head is not found."""
    head = _head(_stopped_in(exc))
    if head is None:
        return None
    target, headers = head
    try:
        policy.check(headers)
        path = URL(target).path
    except (GatewayError, ValueError):
        return None
    return cors_origin(headers, path)


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering a body in a coding its parser refuses before any route runs (br or
    zstd without their modules) as the gateway answers a coding it does not decode, not with a text/plain 400 and
    a traceback logged at ERROR. That refusal reaches no middleware, so it is counted here (`refused`, as
    guard_middleware counts the others). This answer and aiohttp's own to a request it cannot parse name an allowed
    origin (`origins`) as the guard would (`refused_request_origin`); so does aiohttp's answer to an exception that
    escaped a handler (500; 504 for a TimeoutError), with the origin the guard recorded on that request."""

    __slots__ = ()
    # Set on a server's own subclass (EdgeServer): a handler has no room of its own.
    refused: ClassVar[Callable[[str, int], None] | None] = None
    origins: ClassVar[HostOriginPolicy | None] = None

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, ContentEncodingError):
            response = self._coding_refused(exc)
        elif isinstance(exc, HttpProcessingError) and status < 500:  # the parser refused the request
            response = self._unreadable(exc, status)
        else:
            response = super().handle_error(request, status, exc, message)
        # A request the guard passed, whose handler let an exception escape (the 500, a TimeoutError's 504): the
        # origin the guard recorded on it. Else a request the parser refused: its head is found again.
        origin = request.get(CORS_ORIGIN)
        origins = type(self).origins
        if origin is None and origins is not None and isinstance(exc, HttpProcessingError):
            origin = refused_request_origin(origins, exc)
        if origin is not None:
            add_cors(response, origin)
        return response

    @staticmethod
    def _unreadable(exc: HttpProcessingError, status: int) -> web.StreamResponse:
        """The 400 to a request the parser refused, logged by kind only: aiohttp's own answer logged it at ERROR with a
        traceback, and both quoted the refused bytes (a header's value, the URL), which can be a secret."""
        what = next((text for kind, text in _UNREADABLE if isinstance(exc, kind)), "the request is malformed")
        # Not HTTP at all (TLS or a scanner on the port: a bad method) is routine noise, at DEBUG as aiohttp logs it.
        log.log(logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO,
                "refused a request the HTTP parser could not read (%s: %s)", type(exc).__name__, what)
        response = web.Response(status=status, text=f"{status} Bad Request: {what}")
        response.force_close()  # the parser stopped where it could not read on: the rest is not a request
        return response

    def _coding_refused(self, exc: ContentEncodingError) -> web.StreamResponse:
        log.debug("refused a body in an undecoded content coding: %s", exc)
        response = error_response(coding_refused())
        response.force_close()  # the parser stopped at the headers: the body is still on the wire
        refused = type(self).refused
        if refused is not None:
            refused(response[REFUSED], response.status)
        return response


class EdgeServer(web.Server):
    """aiohttp's server, with an `EdgeRequestHandler` (its own subclass, telling its `refused` and holding its
    `origins`) for each connection."""

    handler_class: type[EdgeRequestHandler] = EdgeRequestHandler

    def __call__(self) -> RequestHandler:
        # aiohttp makes the handler (with its own fallbacks for handler settings); only its class changes, to a
        # subclass with the same layout (no slots of its own), once per connection.
        handler = super().__call__()
        handler.__class__ = self.handler_class
        return handler


def answer_parser_refusals(server: web.Server, refused: Callable[[str, int], None] | None = None,
                           origins: HostOriginPolicy | None = None) -> None:
    """Make the server `AppRunner` built an `EdgeServer` (same state): aiohttp builds it and makes each
    connection's handler itself, so its class is the one hook on that handler. Each handler is made as before, of
    a subclass that changes only the error answers: a request aiohttp's parser accepts costs exactly what it did.
    `refused(reason, status)` is told of each br/zstd refusal, as `guard_middleware`'s is of the others; `origins`
    (the guard's policy) decides which origin a parser's refusal names."""
    server.__class__ = EdgeServer
    if refused is not None or origins is not None:  # a handler has no room for them: a class for this server
        edge = cast(EdgeServer, server)
        edge.handler_class = type("ServerEdgeRequestHandler", (EdgeRequestHandler,), {
            "__slots__": (), "origins": origins, **({"refused": staticmethod(refused)} if refused else {})})
