"""The checks every part of a policy test case file shares: mappings, known keys, upstream names, the error."""

from __future__ import annotations

from typing import Any

from gateway.config.upstreams import NAME_RE
from gateway.identity.chain import ChainError, actor_id


class CaseError(Exception):
    """A cases file (or a CLI input) that cannot be understood; the message says where."""


def mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    """`value` when it is a mapping ({} for null or absent); else a CaseError naming `what` at `where`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CaseError(f"{where}: {what} must be a mapping, got {type(value).__name__}")
    return value


def check_text_settings(doc: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """A file's own settings that are text (`environment:`, `policies:`): an empty `environment:` (null) was read as
    the text "None", a list as its Python text, and a `policies:` that is no path was ignored for the default."""
    for key in keys:
        if key in doc and not isinstance(doc[key], str):
            raise CaseError(f"{where}: {key} must be a string, got {type(doc[key]).__name__}")


def not_a_mapping(where: str) -> bool:
    raise CaseError(f"{where} must be a mapping")


def check_keys(found: Any, known: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in found if k not in known)
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def check_upstream(upstream: str, where: str) -> None:
    """An upstream name a config can hold: `Inventory` was decided as given, and no call ever matches it."""
    if not NAME_RE.fullmatch(upstream):
        raise CaseError(f"{where}: upstream {upstream!r} is no upstream name: names are [a-z0-9_-]+ (upstreams[].name)")


def stated_issuer(spec: dict[str, Any], key: str, where: str) -> str:
    """The issuer a principal states (`iss` of claims, `issuer` of an inline principal); "" when it states none,
    which leaves `principal.issuer` out, so a policy reading it denies with an evaluation error."""
    value = spec.get(key, "")
    if not isinstance(value, str) or (key in spec and not value):
        raise CaseError(f"{where}: {key} must be a non-empty string (the issuer that vouches for it), got {value!r}")
    return value


def check_inline_agent(ident: str, attributes: dict[str, Any], where: str) -> None:
    """An inline principal or actor is one a token or the `agents:` registry could give: a case about an agent the
    gateway never decides for tests nothing. identify refuses an empty id and one claiming to be a SPIFFE ID that is
    not a valid one; a claim's "" counts as missing and the registry refuses it (`tenant: ""` would even equal the
    empty context.tenant of a principal without one)."""
    try:
        actor_id(ident)
    except ChainError as exc:
        raise CaseError(f"{where}: principal {ident!r}: {exc} (no token names such an agent)") from exc
    for name, value in attributes.items():
        if value == "" or (isinstance(value, list) and "" in value):
            raise CaseError(f"{where}: principal {ident!r}: attributes.{name} is empty or holds \"\" (no agent has "
                            "that: a claim's \"\" counts as missing, the agents registry refuses it)")
