"""A light span made current for a block (the gateway's SERVER, CLIENT and stage spans): set, marked, ended."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from gateway.telemetry.span_errors import mark_error
from gateway.telemetry.spans import LightSpan


class CurrentSpan:
    """A light span made current for a block; an exception leaving it marks the span. Ends it on exit.

    `own_code=False` (CLIENT spans): the span's `rpc.response.status_code` is only ever the upstream's. `redact`: the
    gateway's secret redactor, for the status description."""

    __slots__ = ("_own_code", "_redact", "_span", "_token", "_var")

    def __init__(self, var: ContextVar[LightSpan | None], span: LightSpan, *, own_code: bool = True,
                 redact: Callable[[Any], Any] | None = None) -> None:
        self._var = var
        self._span = span
        self._own_code = own_code
        self._redact = redact  # the gateway's secret redactor (known secrets): an error's message may quote one
        self._token: Token[LightSpan | None] | None = None

    def __enter__(self) -> LightSpan:
        self._token = self._var.set(self._span)
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            mark_error(self._span, exc, own_code=self._own_code, redact=self._redact)
        if self._token is not None:
            self._var.reset(self._token)
        self._span.end(time.time_ns())
