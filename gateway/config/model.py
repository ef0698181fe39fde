"""Frozen, typed configuration models: the one shape of customs.yaml, unknown keys rejected.

The contract is pinned in docs/configuration.md (and ../shared/interfaces.md). Each part of the
gateway is handed only the section it needs; there is no global settings object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from gateway.config.addresses import allowed_host, allowed_origin, listen_host, url_host
from gateway.config.base import HttpUrl, Model, url_problem
from gateway.config.rules import (
    approvals_rules,
    enforce,
    identity_rules,
    issuer_rules,
    limit_rule_rules,
    unique_upstream_rules,
)

# An upstream's entry is defined in upstreams.py; its models stay importable from here, like every other section's.
from gateway.config.upstreams import BreakerConfig as BreakerConfig
from gateway.config.upstreams import CredentialsConfig as CredentialsConfig
from gateway.config.upstreams import Sensitivity as Sensitivity
from gateway.config.upstreams import ToolOverride as ToolOverride
from gateway.config.upstreams import UpstreamConfig as UpstreamConfig
from gateway.config.upstreams import pin_digest as pin_digest
from gateway.spiffeid import InvalidSpiffeId, is_spiffe_uri, parse_spiffe_id, validate_trust_domain

# The most `act` nesting a token may carry at all; `policies.max_chain_depth` chooses a limit up to it.
MAX_CHAIN_DEPTH = 16


class TlsConfig(Model):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ListenConfig(Model):
    host: Annotated[str, AfterValidator(listen_host)] = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    public_url: HttpUrl | None = None
    allowed_origins: tuple[Annotated[str, AfterValidator(allowed_origin)], ...] = ()
    allowed_hosts: tuple[Annotated[str, AfterValidator(allowed_host)], ...] = ()
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_json_depth: int = Field(64, gt=0)
    drain_timeout_s: float = Field(20.0, ge=0)
    idle_timeout_s: float = Field(60.0, gt=0)  # a connection with no request in progress is closed after this
    body_timeout_s: float = Field(30.0, gt=0)  # a request body must arrive in full within this
    tls: TlsConfig | None = None

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        # Every URL of the gateway is public_url + a path (/mcp, RFC 9728 metadata): after a query or a
        # fragment that path would name no resource at all.
        if value is not None and ("?" in value or "#" in value):
            raise ValueError("must not have a query or fragment (it is the base of the gateway's URLs)")
        return value

    @property
    def resource_url(self) -> str:
        """The gateway's own base URL (RFC 8707 resource), used for `aud` checks and metadata."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{url_host(self.host)}:{self.port}"


def _trust_domain(value: str) -> str:
    # InvalidSpiffeId is a ValueError, so the message is reported at the entry's path.
    return validate_trust_domain(value)


TrustDomain = Annotated[str, AfterValidator(_trust_domain)]


class IssuerConfig(Model):
    issuer: str
    audience: str | None = None  # default: the gateway's resource URL + /mcp
    jwks_file: Path | None = None
    jwks_url: HttpUrl | None = None
    pem_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    claims: dict[str, str] = Field(default_factory=dict)
    require_typ: str | None = None  # e.g. "at+jwt"
    jwks_refresh_s: float = Field(300.0, gt=0)
    # The SPIFFE trust domains whose IDs this issuer may assert (sub and act); None: any.
    spiffe_trust_domains: tuple[TrustDomain, ...] | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        enforce(issuer_rules(self))
        return self


# An empty value would be an attribute all the same: `tenant: ""` passes `principal has tenant` and equals the
# context.tenant of every principal without one. Claims treat "" as missing (identity/chain.py); here it is a mistake.
AgentValue = Annotated[str, Field(min_length=1)]


class IdentityConfig(Model):
    mode: Literal["jwt", "anonymous"] = "anonymous"
    issuers: tuple[IssuerConfig, ...] = ()
    clock_skew_s: int = Field(30, ge=0, le=600)
    anonymous_principal: AgentValue = "anonymous"
    anonymous_attributes: dict[str, AgentValue] = Field(default_factory=dict)  # as the agents registry's values

    @model_validator(mode="after")
    def _issuers(self) -> IdentityConfig:
        enforce(identity_rules(self))
        return self


def _agent_id(value: str) -> str:
    """A registry id a token's `sub` can carry: a `sub` claiming to be a SPIFFE ID is refused unless valid, and an
    empty one always, so such an entry would never match (its agent evaluated with no attributes)."""
    if not value:
        raise ValueError("an agent id must not be empty")
    if is_spiffe_uri(value):
        try:
            parse_spiffe_id(value)
        except InvalidSpiffeId as exc:
            raise ValueError(f"not a valid SPIFFE ID ({exc}), so no token names this agent") from exc
    return value


AgentId = Annotated[str, AfterValidator(_agent_id)]


class AgentRecord(Model):
    """Attributes of a known agent (used for delegation-chain actors without claims)."""

    tenant: AgentValue | None = None
    owner: AgentValue | None = None
    environment: AgentValue | None = None
    clearance: AgentValue | None = None
    trust: AgentValue | None = None
    groups: tuple[AgentValue, ...] = ()


class PoliciesConfig(Model):
    dir: Path = Path("policies")
    shadow_dir: Path | None = None
    watch: bool = True
    max_chain_depth: int = Field(8, ge=1, le=MAX_CHAIN_DEPTH)  # enforced at identify: deeper → 401


class WebhookConfig(Model):
    url: HttpUrl
    secret: str | None = None  # None (left out): unsigned webhooks

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: str | None) -> str | None:
        # `secret: ${WEBHOOK_SECRET}` with the variable set to "" asked for signed webhooks and would send every
        # one unsigned, silently: only leaving the key out means unsigned.
        if value is not None and not value.strip():
            raise ValueError("empty: the webhooks would go out unsigned (is WEBHOOK_SECRET set to \"\"?); set a "
                             "secret, or leave `secret` out to send unsigned webhooks")
        return value


class ApprovalsConfig(Model):
    # Seconds; fractions are fine (short expiries in tests and demos). Finite and at most a year: `.inf` (meant as
    # "never expires") passed, and every held call then failed saying how long it had left.
    ttl_s: float = Field(900.0, gt=0, le=365 * 86400)
    webhooks: tuple[WebhookConfig, ...] = ()
    redact_keys: tuple[str, ...] = ()
    wait_s: float = Field(840.0, ge=0)  # how long a held request stays open before answering approval_pending
    keepalive_s: float = Field(15.0, gt=0)
    quorum: int = Field(1, ge=1, le=20)  # as @quorum("N") (authz MAX_QUORUM): more is a typo no call gets past
    approvers_issuer: str | None = None  # default: any configured issuer


class RedisConfig(Model):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "customs:"
    max_connections: int = Field(64, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a redis:// URL")
        problem = url_problem(value, spaces=False) or _redis_options_problem(value)  # a password may hold a space
        if problem is not None:
            raise ValueError(f"not a redis:// URL: {problem}")
        return value


def _redis_options_problem(url: str) -> str | None:
    """What redis-py refuses in the URL's query (`?db=x`, an option it does not take), checked as it will read it:
    serve stopped with its traceback at start, or served with every Redis operation failing, after config check
    passed. Its messages name the option, never a value (the password may be one)."""
    from redis.asyncio.connection import ConnectionPool  # here: only a config with a Redis store pays the import
    from redis.exceptions import RedisError

    try:
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]  # builds it, connects nowhere
    except (ValueError, RedisError) as exc:  # RedisError: rediss://…?ssl_cert_reqs=bogus
        return str(exc)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
        return f"redis-py takes no option {unknown.group(1)!r} here" if unknown else "redis-py cannot read its options"
    return None


class RedisStore(Model):
    redis: RedisConfig


def _store_kind(value: Any) -> str:
    return "Redis" if isinstance(value, dict) else "Memory"


# Tagged by shape, so a broken redis section is reported alone, not with "should be 'memory'" beside it.
StoreConfig = Annotated[Annotated[Literal["memory"], Tag("Memory")] | Annotated[RedisStore, Tag("Redis")],
                        Discriminator(_store_kind)]


class DecisionLogConfig(Model):
    path: Path | None = None  # None: stdout
    include_args: bool = False


def _otlp_base(value: str) -> str:
    # The signal's path (/v1/traces, /v1/metrics) is appended to the text as written, as the SDK does with
    # OTEL_EXPORTER_OTLP_ENDPOINT: after a query or fragment it would land in them, and every export miss.
    if "?" in value or "#" in value:
        raise ValueError("an OTLP base URL takes no query or fragment (/v1/traces or /v1/metrics is appended)")
    return value


OtlpBaseUrl = Annotated[HttpUrl, AfterValidator(_otlp_base)]


class TracesConfig(Model):
    endpoint: OtlpBaseUrl | None = None
    console: bool = False
    capture_args: bool = False
    sample_ratio: float = Field(1.0, ge=0, le=1)
    trust_inbound: bool = True  # False: inbound traceparent becomes a span link, never the parent


class MetricsConfig(Model):
    prometheus: bool = True
    otlp_endpoint: OtlpBaseUrl | None = None


class TelemetryConfig(Model):
    service_name: str | None = None
    traces: TracesConfig = TracesConfig()
    metrics: MetricsConfig = MetricsConfig()


class LimitRule(Model):
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> LimitRule:
        enforce(limit_rule_rules(self))
        return self


class LimitsConfig(Model):
    per_principal: LimitRule = LimitRule()
    per_tool: LimitRule = LimitRule()
    # Open sessions in this replica (initialize, legacy SSE): beyond them initialize answers rate_limited.
    max_sessions_per_principal: int = Field(1_000, gt=0)
    max_sessions: int = Field(10_000, gt=0)


class TasksConfig(Model):
    # Finite and at most a year: with store.redis a task's in-use mark lives idle_s in Redis, which takes no
    # endless TTL (.inf passed and then refused every explicit task's credential as "store unavailable").
    idle_s: float = Field(300.0, gt=0, le=365 * 86400)


# Key names redacted whatever `secrets.redact_keys` says: a list configured to add one name (`ssn`) must not
# silently stop the redaction of passwords and tokens.
BUILTIN_REDACT_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization")


class SecretsConfig(Model):
    redact_keys: tuple[str, ...] = BUILTIN_REDACT_KEYS  # added to the built-in names, never in their place
    sensitive_headers: tuple[str, ...] = ()


class PinningConfig(Model):
    mode: Literal["tofu", "strict", "off"] = "tofu"
    admin_group: str = "admins"  # members (groups claim) may re-approve quarantined tools
    verify_interval_s: float = Field(60.0, gt=0, le=3600)  # loaded tool lists re-checked against pins this often


class SigningConfig(Model):
    key_dir: Path = Path(".customs/keys")
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    # null: a missing key is generated only when `environment` is dev, development or local.
    generate: bool | None = None
    # Automatic rotation; null = only on demand. At least a second: 0.001 generated a key per loop turn (busy, and
    # key_dir filling up, every key kept in the JWKS for the longest ttl_s plus retire_grace_s).
    rotate_every_s: float | None = Field(None, ge=1)
    retire_grace_s: float = Field(60.0, ge=0)  # a retired key stays published for the longest ttl_s plus this


class Config(Model):
    listen: ListenConfig = ListenConfig()
    upstreams: tuple[UpstreamConfig, ...]
    identity: IdentityConfig = IdentityConfig()
    agents: dict[AgentId, AgentRecord] = Field(default_factory=dict)
    policies: PoliciesConfig = PoliciesConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    store: StoreConfig = "memory"
    decision_log: DecisionLogConfig = DecisionLogConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    limits: LimitsConfig = LimitsConfig()
    tasks: TasksConfig = TasksConfig()
    secrets: SecretsConfig = SecretsConfig()
    signing: SigningConfig = SigningConfig()
    pinning: PinningConfig = PinningConfig()
    environment: str = "dev"

    @field_validator("environment")
    @classmethod
    def _environment_as_policies_compare_it(cls, value: str) -> str:
        # context.environment is compared exactly (`== "production"`): "" (a variable set to nothing) or
        # "production\n" (a variable read from a file) made every production-only forbid silently never fire.
        if not value or value != value.strip():
            raise ValueError(f"must be a name without surrounding whitespace (got {value!r})")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Config:
        # Only reached when every field is valid; parse_config runs the same rules on the raw document
        # so that duplicates are reported next to other problems too (gateway/config/rules.py).
        enforce(unique_upstream_rules(self))
        enforce(approvals_rules(self))
        return self

    def upstream(self, name: str) -> UpstreamConfig | None:
        return next((u for u in self.upstreams if u.name == name), None)


def model_schema() -> dict[str, Any]:
    """JSON schema of the config (used by docs and the compose static check)."""
    return Config.model_json_schema()
