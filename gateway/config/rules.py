"""Cross-field rules of customs.yaml, each problem with the precise path of the field it is about.

Pydantic skips a model's `after` validators (and a field validator on a list) as soon as any field
inside failed, so a rule written only as a validator is reported only when nothing else is wrong,
and at the model's path. These rules are plain functions over either the raw document (mappings
and lists) or the validated models, so `parse_config` runs them on the raw document always, next
to the field errors, and the models run the same functions as validators (for configs built in
code). A problem is `(location, message)`, the location relative to the node given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

Loc = tuple[int | str, ...]
Problem = tuple[Loc, str]
RULE_ERROR = "config_rule"  # the pydantic error type of a rule raised from a model validator


def _get(node: Any, key: str, default: Any = None) -> Any:
    """A field of a raw mapping or a validated model alike (anything else has no fields)."""
    if isinstance(node, Mapping):
        return node.get(key, default)
    if isinstance(node, BaseModel):
        return getattr(node, key, default)
    return default


def _items(node: Any) -> list[Any]:
    """The entries of a raw list or a validated tuple; nothing when it is neither (a field error says so)."""
    return list(node) if isinstance(node, Sequence) and not isinstance(node, str | bytes) else []


# Headers of an upstream request that belong to the HTTP exchange or the MCP session: the HTTP transports
# set them themselves and drop anything else's value for them (a credential there would never be sent).
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "mcp-session-id",
                              "mcp-protocol-version", "last-event-id", "content-type", "accept"})
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1: a token


# CredentialsConfig.mode's values: another is the mode field's own error, and the rules below, reading the settings
# of a mode nobody has, would only add misleading lines ("narrow_to_args: only used by mode minted (mode is mint)").
CredentialMode = Literal["none", "static", "minted", "token_exchange"]
CREDENTIAL_MODES = frozenset(get_args(CredentialMode))


def credentials_rules(credentials: Any) -> Iterator[Problem]:
    mode = _get(credentials, "mode", "none")
    if not isinstance(mode, str) or mode not in CREDENTIAL_MODES:
        return
    header = _get(credentials, "header", "Authorization")
    if mode != "none" and isinstance(header, str):
        if not _FIELD_NAME.fullmatch(header):
            yield ("header",), f"{header!r} is not an HTTP header name"
        elif header.lower() in RESERVED_HEADERS:
            yield ("header",), f"{header} is set by the transport itself; the credential would never be sent"
    prefix = _get(credentials, "value_prefix")
    if isinstance(prefix, str) and (problem := _control_problem(prefix)):
        yield ("value_prefix",), problem
    audience = _get(credentials, "audience")
    if audience == "":  # a variable set to nothing: not "use the default" in disguise
        yield ("audience",), "must not be empty (leave it out for the upstream's url)"
    elif isinstance(audience, str) and (audience != audience.strip() or not audience.isprintable()):
        # A line break read in with a variable went into every token's aud: every call refused upstream.
        yield ("audience",), ("must not hold control characters or begin or end with white space (an upstream's "
                              "identifier has none)")
    if mode != "minted" and _items(_get(credentials, "narrow_to_args")):
        # Only a minted token carries narrowed argument values; in any other mode the list would narrow nothing.
        yield ("narrow_to_args",), f"only used by mode minted (mode is {mode})"
    if mode == "static" and not (_get(credentials, "value_env") or _get(credentials, "value_file")):
        yield (), "mode static needs value_env or value_file"
    elif mode == "static" and _get(credentials, "value_env") and _get(credentials, "value_file"):
        yield (), "mode static takes one of value_env or value_file, not both"  # only the variable would be read
    for key in ("value_env", "value_file"):
        if mode != "static" and _get(credentials, key) is not None:
            # A key in another mode is never sent (`mode: static` left out reads as none): the upstream would
            # refuse every call and nothing would say why.
            yield (key,), f"only used by mode static (mode is {mode})"
    for key in ("audience", "token_endpoint", "client_id", "client_secret", "scope"):
        if _get(credentials, key) is None:
            continue
        if mode == "none":  # `mode: minted` (or token_exchange) left out
            yield (key,), "mode none sends no credential (set credentials.mode to the one this is for)"
        elif key == "audience" and mode == "static":  # a fixed key names no audience
            yield (key,), f"only used by modes minted and token_exchange (mode is {mode})"
        elif key != "audience" and mode != "token_exchange":  # `scope: crm.read` beside mode minted was ignored
            yield (key,), f"only used by mode token_exchange (mode is {mode})"
    if mode == "token_exchange":
        for key in ("token_endpoint", "client_id"):
            if not _get(credentials, key):
                yield (key,), "required by mode token_exchange"
        for key in ("token_endpoint", "revocation_endpoint"):
            if _has_user_info(_get(credentials, key)):  # the exchange's own Basic auth could never be sent
                yield (key,), f"{_USER_INFO}, beside the client_id/client_secret one: leave the user info out"
    elif _get(credentials, "revocation_endpoint") is not None:
        # Only exchanged tokens come from an authorization server; a minted token is revoked by Customs itself.
        yield ("revocation_endpoint",), f"only used by mode token_exchange (mode is {mode})"


def upstream_rules(upstream: Any) -> Iterator[Problem]:
    url, command, transport = _get(upstream, "url"), _get(upstream, "command"), _get(upstream, "transport")
    if (url is None) == (command is None):
        yield (), "exactly one of url or command is required"
    if command is not None and isinstance(command, Sequence) and len(command) == 0:
        yield ("command",), "must not be empty"
    if command is not None and transport not in (None, "stdio"):
        yield ("transport",), "command upstreams use the stdio transport"
    if url is not None and transport == "stdio":
        yield ("transport",), "stdio transport needs command, not url"
    mode = _get(_get(upstream, "credentials"), "mode", "none")
    if command is not None and url is None and mode != "none":
        # A credential is a request header, and a stdio child gets no headers: it would be minted and dropped.
        yield ("credentials",), (f"mode {mode} needs an HTTP upstream (url); a stdio child process "
                                 "receives no request headers, so the credential would never reach it")
    yield from _static_headers(upstream, mode)
    yield from _user_info(upstream, mode)
    yield from _child_process(upstream)
    yield from _unused_by_transport(upstream)


def _unused_by_transport(upstream: Any) -> Iterator[Problem]:
    """Settings the upstream's transport never reads: accepted, they were dropped unseen (a key in a stdio child's
    `headers:` never reached it, as a credential would not; an HTTP upstream's `env:` or `cwd:` changed nothing)."""
    url, command = _get(upstream, "url"), _get(upstream, "command")
    if (url is None) == (command is None):  # which transport is meant is a problem of its own (upstream_rules)
        return
    if command is not None and _get(upstream, "headers"):
        yield ("headers",), "a stdio child process receives no request headers (give it values with env:)"
    if url is not None:
        what = {"env": "with an environment", "cwd": "in a directory"}
        for key in ("env", "cwd"):
            if _get(upstream, key):
                yield (key,), (f"only a stdio child (command) is started {what[key]}; an HTTP upstream is no "
                               "process the gateway starts")


def _has_user_info(url: Any) -> bool:
    try:
        return isinstance(url, str) and "@" in urlsplit(url).netloc
    except ValueError:  # no URL at all (an unclosed [): the field's own error says so
        return False


_USER_INFO = "holds user info (name:password@), which is sent as an HTTP Basic Authorization header of its own"


def _user_info(upstream: Any, mode: Any) -> Iterator[Problem]:
    """aiohttp refuses a request that sets Authorization to a URL with user info (which it sends as Basic
    auth): every call to such an upstream was an internal_error while config check said OK."""
    if not _has_user_info(_get(upstream, "url")):
        return
    header = _get(_get(upstream, "credentials"), "header", "Authorization")
    headers = _get(upstream, "headers")
    static = [n for n in (headers if isinstance(headers, Mapping) else ()) if str(n).lower() == "authorization"]
    if mode in CREDENTIAL_MODES and mode != "none" and isinstance(header, str) and header.lower() == "authorization":
        what = f"the credential (mode {mode})"
    elif static:
        what = f"the static header {static[0]}"
    else:
        return
    yield ("url",), f"{_USER_INFO}, so no request with {what} in Authorization can be sent: leave the user info out"


def _child_process(upstream: Any) -> Iterator[Problem]:
    """What no process can be started with (execve takes NUL-terminated strings): the child would fail to start
    at every back-off, `could not start: ValueError: embedded null byte`, its upstream never available."""
    command = _get(upstream, "command")
    for i, arg in enumerate(_items(command)):
        if i == 0 and arg == "":
            yield ("command", 0), "must not be empty (the program to run)"
        elif isinstance(arg, str) and "\0" in arg:
            yield ("command", i), "holds a NUL character, which no process argument can"
    env = _get(upstream, "env")
    for name, value in env.items() if isinstance(env, Mapping) else ():
        if isinstance(name, str) and (not name or "=" in name or "\0" in name):
            yield ("env", name), "not an environment variable name (no '=' or NUL)"
        elif isinstance(value, str) and "\0" in value:
            yield ("env", name), "holds a NUL character, which no environment variable can"
    cwd = _get(upstream, "cwd")
    if cwd is not None and "\0" in str(cwd):
        yield ("cwd",), "holds a NUL character, which no path can"


# RFC 9110 §5.5: a field value is visible characters, spaces and tabs; aiohttp refuses CR, LF and NUL with a
# ValueError when the request is sent (the agent's initialize got a text/plain 500), the rest is no header text.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _static_headers(upstream: Any, mode: Any) -> Iterator[Problem]:
    """Static headers every request to the upstream carries: each must be one a request can carry, and not
    one the transport or the credential sets (one of the two values would silently lose, or break the session)."""
    header = _get(_get(upstream, "credentials"), "header", "Authorization")
    headers = _get(upstream, "headers")
    if not isinstance(headers, Mapping):
        return
    for name, value in headers.items():
        if not isinstance(name, str) or "${" in name:  # a reference in a key is a problem of its own (load.py)
            continue
        if not _FIELD_NAME.fullmatch(name):
            yield ("headers", name), "not an HTTP header name"
        elif name.lower() in RESERVED_HEADERS:
            yield ("headers", name), "is set by the transport itself; this value would break or redirect its requests"
        elif mode != "none" and isinstance(header, str) and name.lower() == header.lower():
            yield ("headers", name), (f"names the credential's header ({header}, mode {mode}); the credential "
                                      "would replace this value")
        if isinstance(value, str) and (problem := _control_problem(value)):
            yield ("headers", name), problem


def _control_problem(value: str) -> str | None:
    """Why no HTTP header value can carry `value`, or None when one can."""
    control = _CONTROL.search(value)
    if control is None:
        return None
    shown = repr(control.group())[1:-1]  # \r, \x00: as the YAML would escape it
    return f"holds a control character ({shown}); an HTTP header value cannot carry one"


# The JWS algorithms an access token may use: asymmetric ones whose key type the verifier can check
# (gateway.identity.verify_keys.VerifyKey.allows). `alg` is case-sensitive (RFC 7515), so a name outside this set
# would silently refuse every token of the issuer.
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K",
                    "EdDSA")


# Why no claim mapping, anonymous attribute or policy-test `claims:` may name the attribute `issuer`.
ISSUER_ATTRIBUTE = "`issuer` is the issuer that vouched for the agent, set by the gateway on every Agent"


def issuer_rules(issuer: Any) -> Iterator[Problem]:
    # "" (a variable set to nothing) would match only tokens naming "": every real token refused, and a token
    # with aud [""] (for no resource in particular) accepted; a require_typ of "" refuses every token with a typ.
    hints = {"audience": " (leave it out for <public_url>/mcp)", "require_typ": " (leave it out to accept any typ)"}
    for key in ("issuer", "audience", "require_typ"):
        value = _get(issuer, key)
        if value == "":
            yield (key,), "must not be empty" + hints.get(key, "")
        elif isinstance(value, str) and value != value.strip():
            # A ${VAR} read from a file keeps its last newline (a ConfigMap made --from-file): no token's iss, aud
            # or typ has it, so every token was refused while config check said OK.
            yield (key,), f"must not start or end with whitespace ({value!r})" + hints.get(key, "")
    claims = _get(issuer, "claims")
    for attribute, claim in claims.items() if isinstance(claims, Mapping) else ():
        if claim == "":  # no token has a claim named "": the attribute (say tenant) was silently never set
            yield ("claims", attribute), "must name a claim (leave the attribute out for its default claim)"
    if sum(_get(issuer, key) is not None for key in ("jwks_file", "jwks_url", "pem_file")) != 1:
        yield (), "exactly one of jwks_file, jwks_url or pem_file is required"
    listed = _get(issuer, "algorithms")
    algorithms = [a for a in _items(listed) if isinstance(a, str)]
    if isinstance(listed, list | tuple) and not algorithms:  # (not a list at all: its field error says so)
        yield ("algorithms",), f"must name at least one algorithm ({', '.join(TOKEN_ALGORITHMS)})"
    bad = [a for a in algorithms if a.upper() == "NONE" or a.upper().startswith("HS")]
    if bad:
        yield ("algorithms",), f"not allowed for access tokens: {', '.join(bad)}"
    by_upper = {a.upper(): a for a in TOKEN_ALGORITHMS}
    for name in algorithms:
        if name in TOKEN_ALGORITHMS or name in bad:
            continue
        hint = f"; did you mean {by_upper[name.upper()]}?" if name.upper() in by_upper else ""
        yield ("algorithms",), f"unknown algorithm {name!r}{hint} (supported: {', '.join(TOKEN_ALGORITHMS)})"
    yield from _trust_domain_rules(issuer)
    if isinstance(claims, Mapping) and "issuer" in claims:
        # The gateway drops it for the verified issuer (authz/entities.py): a mapping of it meant something else.
        yield ("claims", "issuer"), f"{ISSUER_ATTRIBUTE} (principal.issuer: the token's iss); " \
            "map the claim to another attribute name"


def _trust_domain_rules(issuer: Any) -> Iterator[Problem]:
    listed = _get(issuer, "spiffe_trust_domains")
    if listed is not None and isinstance(listed, Sequence) and not isinstance(listed, str) and not listed:
        # An empty allow-list would refuse every SPIFFE subject of the issuer: more likely a mistake than intent.
        yield ("spiffe_trust_domains",), "must name at least one trust domain (leave it out to allow any)"


def identity_rules(identity: Any) -> Iterator[Problem]:
    issuers = _get(identity, "issuers")
    if _get(identity, "mode", "anonymous") == "jwt" and isinstance(issuers, list | tuple | None) and not issuers:
        yield ("issuers",), "mode jwt needs at least one issuer"
    attributes = _get(identity, "anonymous_attributes")
    if isinstance(attributes, Mapping) and "issuer" in attributes:
        yield ("anonymous_attributes", "issuer"), f'{ISSUER_ATTRIBUTE} (principal.issuer: "anonymous" here); ' \
            "use another attribute name"


def approvals_rules(config: Any) -> Iterator[Problem]:
    """approvals.approvers_issuer names one of identity.issuers: tokens of any other issuer cannot approve, so
    another value (a typo, a trailing slash, anonymous mode) would leave every held call undecidable."""
    wanted = _get(_get(config, "approvals"), "approvers_issuer")
    if not isinstance(wanted, str):
        return
    identity = _get(config, "identity")
    issuers = [i for i in (_get(x, "issuer") for x in _items(_get(identity, "issuers"))) if isinstance(i, str)]
    if _get(identity, "mode", "anonymous") != "jwt" or wanted not in issuers:
        yield (("approvals", "approvers_issuer"),
               f"{wanted!r} is not one of identity.issuers ({', '.join(issuers) or 'none'}"
               f"{'' if _get(identity, 'mode', 'anonymous') == 'jwt' else ', identity.mode is not jwt'}): "
               "no token could approve")


# The longest refill (burst / rate_per_s) a bucket may have: with store.redis its key lives that long, and past
# about 10^14 s Redis refused the expiry, so every limited call was refused as "Rate limiter unavailable".
MAX_REFILL_S = 365 * 86400


def limit_rule_rules(rule: Any) -> Iterator[Problem]:
    if _get(rule, "burst") is not None and _get(rule, "rate_per_s") is None:
        yield ("burst",), "needs rate_per_s (a burst alone limits nothing)"
    rate, burst = _number(_get(rule, "rate_per_s")), _number(_get(rule, "burst"))
    if rate is not None and rate > 0:
        size = burst if burst is not None and burst > 0 else max(1, int(rate))  # gateway.limits.burst
        if size / rate > MAX_REFILL_S:
            yield (), f"refills in {size / rate:.0f} s (burst / rate_per_s), more than a year ({MAX_REFILL_S} s)"


def _number(value: Any) -> float | None:
    """A number as the document holds it (an env reference gives a numeric string), else None (its own error)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def unique_upstream_rules(config: Any) -> Iterator[Problem]:
    first: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    for index, upstream in enumerate(_items(_get(config, "upstreams"))):
        name = _get(upstream, "name")
        if not isinstance(name, str):
            continue
        if name in first:
            yield ("upstreams", index, "name"), f"duplicate upstream name {name!r} (also upstreams[{first[name]}])"
            continue
        first[name] = index
        written = _get(upstream, "prefix")
        prefix = f"{name}__" if written is None else written
        if not isinstance(prefix, str):
            continue
        if prefix in prefixes:
            # Calls by a prefixed name go to one upstream: the other's tools and prompts could never be reached.
            # A prefix not written is the entry's default: named at the entry, not at a key the file does not have.
            where, what = (("upstreams", index, "prefix"), "tool prefix") if written is not None else \
                (("upstreams", index), "its default tool prefix")
            yield (where, f"{what} {prefix!r} is also upstreams[{prefixes[prefix]}]'s: names in the aggregated /mcp "
                          "view would not say which upstream they belong to")
        else:
            prefixes[prefix] = index


def _mappings(node: Any) -> list[tuple[int, Mapping[str, Any]]]:
    """The entries of a raw list that are mappings, with their indexes."""
    return [(index, entry) for index, entry in enumerate(_items(node)) if isinstance(entry, Mapping)]


def _under(prefix: Loc, problems: Iterator[Problem]) -> Iterator[Problem]:
    return ((prefix + loc, message) for loc, message in problems)


def document_rules(data: Any) -> list[Problem]:
    """Every rule over a whole (raw) config document, with paths from its root."""
    problems: list[Problem] = []
    # An entry that is no mapping has its one problem already (`must be a mapping`): no rule over its fields.
    for index, upstream in _mappings(_get(data, "upstreams")):
        problems += _under(("upstreams", index), upstream_rules(upstream))
        problems += _under(("upstreams", index, "credentials"), credentials_rules(_get(upstream, "credentials")))
    identity = _get(data, "identity")
    problems += _under(("identity",), identity_rules(identity))
    for index, issuer in _mappings(_get(identity, "issuers")):
        problems += _under(("identity", "issuers", index), issuer_rules(issuer))
    limits = _get(data, "limits")
    for name in ("per_principal", "per_tool"):
        problems += _under(("limits", name), limit_rule_rules(_get(limits, name)))
    problems += unique_upstream_rules(data)
    problems += approvals_rules(data)
    return problems


def enforce(problems: Iterator[Problem]) -> None:
    """In a model validator: raise the rule problems as one pydantic error that carries them all."""
    found = list(problems)
    if found:
        summary = "; ".join(f"{'.'.join(map(str, loc)) or '(here)'}: {message}" for loc, message in found)
        raise PydanticCustomError(RULE_ERROR, "{summary}", {"summary": summary, "problems": found})
