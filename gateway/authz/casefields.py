"""The checks every part of a policy test case file shares (mappings, keys, upstream names, Unicode); its errors."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from gateway.config.upstreams import NAME_RE
from gateway.context import Principal
from gateway.identity.chain import ChainError, actor_id


class CaseError(Exception):
    """A cases file (or a CLI input) that cannot be understood; the message says where."""


class Refused(Exception):
    """identify would refuse the token of these claims (401 unauthenticated); `message` is what the 401 says."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"{REFUSED}: {message}")


REFUSED = "identify would refuse this token: 401 unauthenticated"
# Claims → the principal a deployment's identify gives them (`--config`: gateway/authz/configured.py); raises
# CaseError for claims no token of it carries, Refused for a token it answers 401.
Identify = Callable[[dict[str, Any], str], Principal]


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


def not_unicode(node: Any, where: str) -> str | None:
    """Where in `node` a string or key is a lone surrogate (YAML's "\\udcff" escape), else None."""
    if isinstance(node, str):
        return None if _is_unicode(node) else where
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key!r}]"
        name = name.removeprefix(".").encode("utf-8", "backslashreplace").decode()
        found = name if isinstance(key, str) and not _is_unicode(key) else not_unicode(value, name)
        if found is not None:
            return found
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TASK_KEYS = frozenset({"calls", "totals", "seen_tools", "not_counted"})


def check_task(task: dict[str, Any], where: str) -> None:
    """context.task as the gateway gives it: a fact of another shape would be dropped by the conversion, and the
    case would test a task that never did what the file says (a misspelled `totals` paid nothing)."""
    check_keys(task, _TASK_KEYS, f"{where}: context.task")
    calls = task.get("calls")
    if calls is not None and (not isinstance(calls, int) or isinstance(calls, bool) or calls < 0):
        raise CaseError(f"{where}: context.task.calls must be a whole number, got {calls!r}")
    totals = task.get("totals")
    if totals is not None and not isinstance(totals, dict):
        raise CaseError(f"{where}: context.task.totals must be a mapping of summed argument to number")
    for name, value in (totals or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CaseError(f"{where}: context.task.totals.{name} must be a number, got {value!r}")
    for key in ("seen_tools", "not_counted"):
        value = task.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise CaseError(f"{where}: context.task.{key} must be a list of strings, got {value!r}")


def check_task_names(task: Any, totals: frozenset[str] | None, where: str) -> None:
    """Task facts a validated policy could read: a total the schema's Task totals record does not name (`totals`:
    its names; None, no such record: unchecked), or a seen tool that is not `<upstream>/<tool>`, is read by no policy,
    so a case stating it tests a task that never paid or called anything (`amout: 10050` held a payment because no
    `amount` total was there, and went on passing whatever the limit became)."""
    if not isinstance(task, dict):
        return
    for name in task.get("totals") or {}:
        if totals is not None and name not in totals:
            close = difflib.get_close_matches(str(name), sorted(totals), n=1)
            raise CaseError(f"{where}: context.task.totals.{name}: the schema's Task totals record has no such total "
                            f"({', '.join(sorted(totals)) or 'none'}), so no policy can read it"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    for seen in task.get("seen_tools") or ():
        upstream, slash, tool = str(seen).partition("/")
        if not (slash and tool and NAME_RE.fullmatch(upstream)):
            raise CaseError(f"{where}: context.task.seen_tools: {seen!r} is not '<upstream>/<tool>' (the gateway "
                            "records each tool a task called so, the upstream's name as configured)")
