"""The base every config model shares: frozen, unknown keys rejected, no booleans where numbers go, every number finite.

Also the value types more than one section uses (an http(s) URL).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, maybe optional or constrained), not a bool."""
    if annotation in (int, float):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _numeric(args[0])
    return origin in (typing.Union, types.UnionType) and any(_numeric(a) for a in args)


class Model(BaseModel):
    # allow_inf_nan=False: `.inf` passed every duration not marked one by one (drain_timeout_s: .inf, a shutdown
    # "up to inf s"; an upstream that never timed out), and `.nan` compares false with any bound. No setting says
    # "no limit" by an infinity (signing.rotate_every_s says "never" by null): every number of the config is finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic's lax mode reads true as 1 and false as 0, so `clock_skew_s: true` would be a one-second skew.
        # Strict mode is no cure: it would refuse the numeric strings an env reference (`port: ${PORT}`) gives.
        if isinstance(value, bool) and info.field_name is not None \
                and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_paths(cls, value: Any, info: ValidationInfo) -> Any:
        # No path can hold a NUL: config check passed one, and serve stopped with "embedded null byte".
        if isinstance(value, str) and "\0" in value and info.field_name is not None \
                and _path(cls.model_fields[info.field_name].annotation):
            raise ValueError("holds a NUL character, which no path can")
        return value


def _path(annotation: Any) -> bool:
    """Whether a field holds a file or directory path (maybe optional)."""
    if annotation is Path:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _path(args[0])
    return origin in (typing.Union, types.UnionType) and any(_path(a) for a in args)


def url_problem(value: str, *, spaces: bool = True) -> str | None:
    """What makes `value` no usable URL beyond its scheme: a control character (a trailing newline is easy to
    paste) or a space in its host (the path's and query's are percent-encoded when sent; `spaces=False` lets both
    be, as redis-py reads a password as written), or a port that is no number in 0-65535 (urllib raises only when
    the port is read, which serve did while starting: a traceback after `config check` had passed the file)."""
    if spaces and (not value.isprintable() or " " in urlsplit(value).netloc.rpartition("@")[2]):
        return "must not contain control characters, nor spaces in its host"
    try:
        urlsplit(value).port  # noqa: B018 -- reading it raises ValueError for a port that is no number in 0-65535
    except ValueError:
        port = urlsplit(value).netloc.rpartition("@")[2].rpartition(":")[2]
        return f"port {port!r} is not a number in 0-65535"
    return None


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a URL (expected http:// or https:// with a host)")
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"not a URL: {problem}")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
