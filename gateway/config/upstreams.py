"""The `upstreams` entries of customs.yaml: where a tool server is, how it is reached, its tools' labels.

An entry also carries what the gateway sends it (credentials, headers) and how long it waits for it
(timeouts, circuit breaker). The rules that span several fields are in rules.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.base import HttpUrl, Model
from gateway.config.rules import CredentialMode, credentials_rules, enforce, upstream_rules

Sensitivity = Literal["public", "internal", "confidential", "restricted"]
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]*$")  # MCP tool-name characters (2025-11-25): prefixed names stay valid
PIN_FORMAT = re.compile(r"sha256:[0-9a-f]{64}")  # a tool definition's pin (gateway/catalog.definition_hash)


def pin_digest(value: str) -> str | None:
    """`value` as a pin (`sha256:` and 64 hex digits, either case; returned lower-case), else None."""
    value = value.strip().lower()
    return value if PIN_FORMAT.fullmatch(value) else None


class ToolOverride(Model):
    """Per-tool labels and overrides of the upstream's MCP annotations."""

    sensitivity: Sensitivity | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None
    leaves_org: bool | None = None
    timeout_s: float | None = Field(None, gt=0)
    pin: str | None = None  # sha256 of the tool definition, pinned from config
    sum_args: tuple[str, ...] = ()  # numeric arguments summed into context.task.totals

    @field_validator("pin")
    @classmethod
    def _pin(cls, value: str | None) -> str | None:
        # A pin no definition can hash to quarantined its tool for good, as "changed since it was pinned".
        if value is None:
            return None
        digest = pin_digest(value)
        if digest is None:
            raise ValueError(f"not a pin: {value[:80]!r} (write sha256: and 64 hex digits, as `customs tools list` "
                             "shows it)")
        return digest


class CredentialsConfig(Model):
    mode: CredentialMode = "none"
    ttl_s: int = Field(60, gt=0, le=3600)
    audience: str | None = None
    narrow_to_args: tuple[str, ...] = ()
    header: str = "Authorization"
    value_env: str | None = None
    value_file: Path | None = None
    value_prefix: str = ""
    token_endpoint: HttpUrl | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = None
    revocation_endpoint: HttpUrl | None = None  # RFC 7009: exchanged tokens are revoked there when their task ends

    @model_validator(mode="after")
    def _mode_fields(self) -> CredentialsConfig:
        enforce(credentials_rules(self))
        return self


class BreakerConfig(Model):
    """The upstream's circuit breaker: opens after `threshold` consecutive connection failures, one trial
    per `cooldown_s` while open (docs/transports.md)."""

    threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(10.0, gt=0)


class UpstreamConfig(Model):
    name: str
    url: HttpUrl | None = None
    command: tuple[str, ...] | None = None
    transport: Literal["streamable_http", "sse", "stdio"] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    prefix: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    tools: dict[str, ToolOverride] = Field(default_factory=dict)
    credentials: CredentialsConfig = CredentialsConfig()
    breaker: BreakerConfig = BreakerConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError("must match [a-z0-9_-]+")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not PREFIX_RE.fullmatch(value):
            raise ValueError("must use only letters, digits, '_', '-' and '.' (the characters of MCP tool names)")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> UpstreamConfig:
        enforce(upstream_rules(self))
        return self

    @property
    def kind(self) -> Literal["streamable_http", "sse", "stdio"]:
        if self.command is not None:
            return "stdio"
        return self.transport or "streamable_http"

    @property
    def tool_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"{self.name}__"
