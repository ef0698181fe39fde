"""Start-up checks of a validated config: the files it names (policies, key sets, TLS, signing keys) are usable.

`customs serve` refuses to start on any problem found here, and `customs config check` reports the same
problems, all of them, each with its config path. Both go through `preflight`, which calls the very
loaders the running gateway uses (the policy loader, the identity key sources, the TLS context), so the
two commands agree on these files. Nothing here needs the network, starts a child or writes a file: JWKS URLs,
upstreams, the store and the directories serve creates (decision log, signing keys where it may generate them)
are not checked, except a `signing.key_dir` that is, or lies below, a file, and a `decision_log.path` that is a
directory or lies below a file (serve could never open it); a signing key serve may not generate
(outside dev) must already be in `signing.key_dir`. A static credential value serve could not read is a warning.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from gateway.authz.policyset import PolicyLoadError, load_policies
from gateway.authz.unsummed import unsummed_forbids
from gateway.config import Config, ConfigError
from gateway.config.model import IssuerConfig, TlsConfig
from gateway.credentials.keys import missing_key_problems
from gateway.credentials.static import static_warnings
from gateway.identity import build_identifier
from gateway.identity.identifier import key_source
from gateway.identity.jwks import FileKeySource


def preflight(config: Config, source: str = "config") -> list[str]:
    """Check every file `config` names; raise ConfigError listing every problem, else return the warnings
    (what serve reports but starts anyway: a broken shadow policy set, see also `policy_warnings`)."""
    problems = [*policy_problems(config.policies.dir, "policies.dir"), *reload_problems(config)]
    if problems:
        raise ConfigError(problems, source)
    shadow = config.policies.shadow_dir
    return [*(policy_problems(shadow, "policies.shadow_dir") if shadow is not None else []),
            *policy_warnings(config), *upstream_warnings(config), *exposure_warnings(config),
            *static_warnings(config.upstreams),
            *program_warnings(config)]


def program_warnings(config: Config) -> list[str]:
    """A stdio upstream whose program cannot be started here (a check may run where it is not installed: a warning)."""
    from gateway.transport.stdio_process import missing_program  # (asyncio and the transport: only when asked)

    return [f"upstreams[{index}].command[0]: {problem}: serve starts, and upstream {upstream.name} stays unavailable "
            "until it is" for index, upstream in enumerate(config.upstreams)
            if upstream.command and (problem := missing_program(upstream)) is not None]


def policy_warnings(config: Config) -> list[str]:
    """Forbids guarded by a task total that no upstreams[].tools.<tool>.sum_args sums (see authz.unsummed);
    a reload of the policies warns about them the same way (PolicyEngine's `summed_totals`)."""
    summed = summed_totals(config)
    sets = [(config.policies.dir, "policies.dir"), (config.policies.shadow_dir, "policies.shadow_dir")]
    warnings: list[str] = []
    for directory, where in sets:
        if directory is None:
            continue
        try:
            loaded = load_policies(directory)
        except PolicyLoadError:
            continue  # reported as the set's own problem
        warnings.extend(unsummed_forbids(loaded, summed, where))
    return warnings


def upstream_warnings(config: Config) -> list[str]:
    """What serve starts with but serves no one as meant: no upstream at all (valid, since a gateway may be set up
    before its servers, yet almost always a mistake: `upstreams: []` passed without a word), tool prefixes one of
    which begins another, and tool labels written under the aggregated view's names."""
    if not config.upstreams:
        return ["upstreams: empty: the gateway has no tool, prompt or resource to offer (every list through /mcp "
                "is empty and /mcp/{upstream} knows no name); list the MCP servers it fronts here"]
    return prefix_warnings(config) + label_warnings(config)


def prefix_warnings(config: Config) -> list[str]:
    """Tool prefixes one of which begins another (`a__`, `a__b__`; an empty one begins every other): a call goes to
    the longest prefix that matches, so the shorter one's items named on from there are hidden (gateway/listing.py
    leaves them out of lists at run time), which config check could only have shown by a tool list."""
    upstreams = config.upstreams
    # A prefix the file does not write (the default, `<name>__`) has no `prefix` key to name: its entry is named.
    at = [f"upstreams[{j}].prefix:" if upstream.prefix is not None else f"upstreams[{j}]: its default prefix"
          for j, upstream in enumerate(upstreams)]
    return [f"{at[j]} {long.tool_prefix!r} begins with {short.tool_prefix!r}, upstreams[{i}]'s "
            f"(upstream {short.name}): a tool or prompt of {short.name} named "
            f"{long.tool_prefix[len(short.tool_prefix):]!r}… would be listed as {long.tool_prefix!r}… and called as "
            f"{long.name}'s, so it is hidden; give them prefixes neither of which begins the other"
            for i, short in enumerate(upstreams) for j, long in enumerate(upstreams)
            if j != i and long.tool_prefix != short.tool_prefix and long.tool_prefix.startswith(short.tool_prefix)]


def label_warnings(config: Config) -> list[str]:
    """`upstreams[].tools` keys written in the aggregated view's form (`inventory__get_stock`,
    `customs://inventory/…`): the entries are keyed by the upstream's own names, so such a label (a
    `sensitivity: restricted` included) applies to nothing and policies never see it."""
    warnings = []
    for index, upstream in enumerate(config.upstreams):
        prefix, resources = upstream.tool_prefix, f"customs://{upstream.name}/"
        for key in upstream.tools:
            own = key[len(prefix):] if prefix and key.startswith(prefix) else \
                key[len(resources):] if key.startswith(resources) else None
            if own:
                warnings.append(f"upstreams[{index}].tools.{key}: the aggregated /mcp name of {own!r}; these labels "
                                f"are keyed by the upstream's own names, so this one applies to nothing (write {own})")
    return warnings


def summed_totals(config: Config) -> frozenset[str]:
    """The task totals some tool's `sum_args` sums: the only ones context.task.totals ever holds."""
    return frozenset(name for upstream in config.upstreams for tool in upstream.tools.values()
                     for name in tool.sum_args)


def reload_problems(config: Config) -> list[str]:
    """What `preflight` refuses beyond the policy sets: a SIGHUP refuses a config file for these. Policy sets
    are left to the policy engine, which reloads (or keeps) the enforced and the shadow set each on its own."""
    log = decision_log_problem(config.decision_log.path)
    return [*_identity_problems(config), *tls_problems(config.listen.tls), *missing_key_problems(config),
            *([log] if log is not None else [])]


def decision_log_problem(path: Path | None) -> str | None:
    """Why serve could never open `decision_log.path` for appending, as far as reading shows (no write is tried):
    it is a directory, or the nearest of its parents that exists is not one. serve reports the same line."""
    if path is None:
        return None
    why, where = ("Is a directory", path) if path.is_dir() else (None, path.parent)
    while why is None and not where.exists() and not where.is_symlink() and where.parent != where:
        where = where.parent
    if why is None and (where.is_dir() or not where.exists()):
        return None
    return f"decision_log.path: {path}: cannot open it for appending ({why or 'Not a directory'}: {where})"


def exposure_warnings(config: Config) -> list[str]:
    """Anonymous identity trusts every caller alike: fine on loopback, a hole on any other address. A wildcard
    listen.host is no URL: without public_url the gateway's own URL would name it. And a jwks_url over plain http."""
    host = config.listen.host
    warnings = []
    if config.listen.public_url is None and host in ("0.0.0.0", "::", ""):
        warnings.append(f"listen.public_url: unset, so the gateway's own URL is {config.listen.resource_url} "
                        f"(listen.host {host!r} is where it listens, not an address agents use): tokens must carry "
                        "that audience and agents' Host headers other than localhost get 403; set public_url to "
                        "the URL agents connect to")
    return warnings + _anonymous_warnings(config) + _plain_jwks_warnings(config)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _plain_jwks_warnings(config: Config) -> list[str]:
    """Every token is trusted on the keys a `jwks_url` gives: over plain http to another machine, whoever is on the
    way can give keys of their own and sign any agent's token (OpenID Connect requires https for jwks_uri)."""
    if config.identity.mode != "jwt":
        return []
    urls = [(index, urlsplit(str(issuer.jwks_url))) for index, issuer in enumerate(config.identity.issuers)
            if issuer.jwks_url is not None]
    return [f"identity.issuers[{index}].jwks_url: plain http to {url.hostname}: anyone on the way can hand the gateway "
            "keys of their own and sign any agent's token; use https"
            for index, url in urls if url.scheme == "http" and not _loopback(url.hostname or "")]


def _anonymous_warnings(config: Config) -> list[str]:
    host = config.listen.host
    if config.identity.mode != "anonymous" or _loopback(host):
        return []
    return [f"identity.mode: anonymous (the default) is for local use only, but listen.host {host} is reachable "
            "from other machines; every caller gets the same anonymous principal (configure identity.mode: jwt)"]


def policy_problems(directory: Path, where: str) -> list[str]:
    try:
        load_policies(directory)
    except PolicyLoadError as exc:
        return [f"{where}: {problem}" for problem in exc.problems or [str(exc)]]
    return []


def _issuer_key_field(issuer: IssuerConfig) -> str | None:
    """The config key of an issuer's key file; None for a JWKS URL (fetched after start, best effort)."""
    if issuer.jwks_file is not None:
        return "jwks_file"
    return "pem_file" if issuer.pem_file is not None else None


def _identity_problems(config: Config) -> list[str]:
    identity = config.identity
    if identity.mode != "jwt":
        return []  # the anonymous identifier reads no file, even when issuers are listed
    problems: list[str] = []
    for index, issuer in enumerate(identity.issuers):
        field = _issuer_key_field(issuer)
        if field is None:
            continue
        try:
            source = key_source(issuer, None, time.monotonic)  # reads and parses the file, as serve does
        except ValueError as exc:
            problems.append(f"identity.issuers[{index}].{field}: {exc}")
            continue
        # Keys that fit none of the allowed algorithms would refuse every token of the issuer with 401.
        unfit = source.unfit_for(issuer.algorithms) if isinstance(source, FileKeySource) else None
        if unfit is not None:
            problems.append(f"identity.issuers[{index}].{field}: {unfit}")
    if problems:
        return problems
    # The whole identifier as serve builds it: whatever else it refuses (an issuer listed twice).
    try:
        build_identifier(identity, config.agents, config.listen.resource_url, None)
    except ValueError as exc:
        message = str(exc)
        problems.append(message if message.startswith("identity") else f"identity: {message}")
    return problems


def _unreadable(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"


def _tls_context(tls: TlsConfig, problems: list[str]) -> ssl.SSLContext:
    # The files are opened one by one first: OpenSSL's errors do not say which file they are about.
    files = {"cert_file": tls.cert_file, "key_file": tls.key_file}
    if tls.client_ca_file is not None:
        files["client_ca_file"] = tls.client_ca_file
    unreadable = {name: why for name, path in files.items() if (why := _unreadable(path)) is not None}
    problems.extend(f"listen.tls.{name}: {why}" for name, why in unreadable.items())
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if not {"cert_file", "key_file"} & unreadable.keys():
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except OSError as exc:
            problems.append(f"listen.tls.cert_file: {tls.cert_file} with key_file {tls.key_file}: "
                            f"not a usable PEM certificate and private key ({exc.strerror or exc})")
    if tls.client_ca_file is not None and "client_ca_file" not in unreadable:
        try:
            ctx.load_verify_locations(str(tls.client_ca_file))
        except OSError as exc:
            problems.append(f"listen.tls.client_ca_file: {tls.client_ca_file}: "
                            f"no usable PEM CA certificate ({exc.strerror or exc})")
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a bearer token alone is still accepted
    return ctx


def tls_problems(tls: TlsConfig | None) -> list[str]:
    """Every problem with the listener's TLS files (none without `listen.tls`)."""
    problems: list[str] = []
    if tls is not None:
        _tls_context(tls, problems)
    return problems


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context (None without `listen.tls`); raises ConfigError listing every problem."""
    if config.listen.tls is None:
        return None
    problems: list[str] = []
    ctx = _tls_context(config.listen.tls, problems)
    if problems:
        raise ConfigError(problems, "listen.tls")
    return ctx
