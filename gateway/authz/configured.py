"""`customs policy explain|test --config`: the deployment's config, and principals built as its identify builds them.

The config is loaded as `customs serve` loads it (gateway.config.load_config: relative paths from the config's
directory, `${ENV}` references, every problem with its path). Claims are turned into a principal by the gateway's
own code (gateway/identity/claims.py): the `identity.issuers[]` entry their `iss` names (its `claims:` mapping
and `spiffe_trust_domains`), the `agents:` registry and `policies.max_chain_depth`. Only what a token's
verification checks (signature, audience, times, header) is not checked: the claims stand for a verified token's;
a `cnf` claim (a sender-constrained token, which verification refuses whatever its signature) is refused here too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.authz.casefields import CaseError, Refused
from gateway.catalog import STRICTER, resource_labels
from gateway.config import Config, ConfigError, load_config
from gateway.context import Principal
from gateway.credentials.redaction import Redactor
from gateway.identity.chain import ChainError
from gateway.identity.claims import mtls_principal, token_principal
from gateway.identity.jwt import SENDER_CONSTRAINED, TokenError, unknown_issuer
from gateway.identity.spiffe import InvalidSpiffeId, svid_id
from gateway.taskstate import summed_args

LABELS = frozenset({"sensitivity", *STRICTER})  # what of a ToolOverride labels the item policies decide on


@dataclass(frozen=True)
class Deployment:
    """A loaded config, read as the gateway's identify and authorize stages read it."""

    config: Config
    path: Path

    @property
    def policies_dir(self) -> Path:
        return self.config.policies.dir

    @property
    def environment(self) -> str:
        return self.config.environment

    def labels(self, name: str, action: str) -> dict[str, Any]:
        """The labels `upstreams[].tools` gives `upstream/item` (a resource URI also its URI templates'), as the
        gateway puts them over the item's annotations; none for an upstream the config does not have."""
        upstream, _, item = name.partition("/")
        found = next((u for u in self.config.upstreams if u.name == upstream), None)
        override = None if found is None else \
            resource_labels(found, item) if action == "read_resource" else found.tools.get(item)
        if override is None:
            return {}
        return {key: value for key, value in override.model_dump(include=set(LABELS)).items() if value is not None}

    def call_context(self, name: str, action: str, args: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """`given` (explain's --context) with what the gateway adds to a call's context where it states none:
        whether the arguments hold a secret, by the deployment's `secrets` rules, and for a tools/call its task's
        facts as for the task's first call (nothing called or seen; this call's summed arguments as the totals)."""
        added: dict[str, Any] = {"args_contain_secret": Redactor(self.config.secrets).contains_secret(args)}
        if action == "call_tool":
            upstream, _, item = name.partition("/")
            found = next((u for u in self.config.upstreams if u.name == upstream), None)
            sums, not_counted = summed_args(found.tools.get(item) if found is not None else None, args)
            added["task"] = {"calls": 0, "totals": sums, "seen_tools": [],
                             **({"not_counted": not_counted} if not_counted else {})}
        return {**added, **given}

    def principal(self, claims: dict[str, Any], where: str) -> Principal:
        """The principal identify gives a token with `claims` (a `spiffe_id` without `sub` stands for a client
        certificate presented without a token); CaseError for claims no token of this config carries, Refused when
        identify would answer 401."""
        identity = self.config.identity
        if identity.mode == "anonymous":
            raise CaseError(f"{where}: {self.path}: identity.mode is anonymous: the gateway reads no token, every call "
                            f"is decided as principal {identity.anonymous_principal!r}; explain that one without "
                            "--config, or use a config with mode jwt")
        if "sub" not in claims and "spiffe_id" in claims:
            return self._certificate(claims, where)
        issuers = {issuer.issuer: issuer for issuer in identity.issuers}
        named = ", ".join(map(repr, issuers))
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise CaseError(f"{where}: no `iss` (with --config the claims are a token of a configured issuer: "
                            f"identity.issuers: {named})")
        if iss not in issuers:
            raise CaseError(f"{where}: iss: {unknown_issuer(iss, issuers)} (identity.issuers: {named}; the gateway "
                            "answers its tokens 401)")
        if "cnf" in claims:  # refused by verification whatever the key (identity/jwt.py): no bound token is taken
            raise Refused(SENDER_CONSTRAINED)
        try:
            return token_principal(claims, issuers[iss], self.config.agents,
                                   max_chain_depth=self.config.policies.max_chain_depth,
                                   svid=_svid(claims.get("spiffe_id"), where))
        except TokenError as exc:
            raise Refused(exc.message) from None
        except ChainError as exc:  # worded as identify words it in the 401
            raise Refused(f"Invalid token: {exc}") from None

    def _certificate(self, claims: dict[str, Any], where: str) -> Principal:
        """A client SVID presented alone: accepted only on a TLS listener asking for client certificates."""
        tls = self.config.listen.tls
        if tls is None or tls.client_ca_file is None:
            raise CaseError(f"{where}: `spiffe_id` without `sub` stands for a client certificate, which this config "
                            "does not ask for (listen.tls.client_ca_file): such a caller is answered 401")
        if set(claims) != {"spiffe_id"}:
            raise CaseError(f"{where}: a client certificate carries no claims: with --config an mTLS caller is "
                            "{\"spiffe_id\": ...} alone (its attributes come from the agents registry), or a token "
                            "with `sub` and `iss`")
        return mtls_principal(str(_svid(claims["spiffe_id"], where)), self.config.agents)


def _svid(value: Any, where: str) -> str | None:
    """A `spiffe_id` stated beside (or instead of) a token: the SPIFFE ID of a verified client certificate."""
    if value is None:
        return None
    try:
        svid = svid_id([value]) if isinstance(value, str) else None
    except InvalidSpiffeId as exc:
        raise CaseError(f"{where}: spiffe_id: {exc}") from exc
    if svid is None:
        raise CaseError(f"{where}: spiffe_id must be a SPIFFE ID (spiffe://trust-domain/path), got {value!r}")
    return svid


def load_deployment(path: Path) -> Deployment:
    """The config at `path`, as serve loads it; raises ConfigError (every problem with its path)."""
    return Deployment(load_config(path), path)


def for_command(config: Path | None, policies: Path | None) -> tuple[Deployment | None, Path | None] | None:
    """The deployment of `--config` (None without it) and the policy directory: --policies, else the config's
    policies.dir (None without either). None after printing why the config is unusable, every problem with its
    path as `customs config check` prints them (the command exits 2)."""
    if config is None:
        return None, policies
    try:
        deployment = load_deployment(config)
    except ConfigError as exc:
        print(exc.report("invalid configuration"), file=sys.stderr)
        return None
    return deployment, policies or deployment.policies_dir
