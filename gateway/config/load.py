"""Load customs.yaml: substitute ${ENV} references, validate, and report every problem with its path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.model import Config
from gateway.config.problems import field_problems, hide_substituted, key_problems, path_text, yaml_kind
from gateway.config.rules import document_rules
from gateway.config.yaml_doc import load_listing_duplicates
from gateway.config.yaml_doc import strict_yaml_load as strict_yaml_load  # re-exported: authz.cases

_REF = r"\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}"
# `$${` is a literal `${`, as in docker compose: the only way to write one (a password, a template) in a value.
# A `${` that starts no reference (last alternative) is an error: taken as text, a mistyped `${SECRET` was a secret.
_ENV_REF = re.compile(r"\$\$\{|\$" + _REF + r"|\$\{")
_SHIELDED = re.compile(r"\$?\$" + _REF)  # an escaped reference is hidden from YAML whole, as a real one


NO_REFERENCE = ("`${` starts no reference (${NAME} or ${NAME:-default}, NAME of letters, digits and _); write $${ for "
                "a literal ${")


class ConfigError(Exception):
    """Invalid configuration; `problems` lists `path: message` lines, all of them."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))

    def report(self, what: str) -> str:
        """`source: what`, then every problem on its own indented line: what the commands print."""
        return "\n".join([f"{self.source}: {what}", *(f"  {p}" for p in self.problems)])


NOT_UNICODE = ("not valid Unicode text (a lone surrogate: a \\u escape, or an environment variable whose bytes are "
               "not UTF-8)")


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _substitute(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """`${VAR}` references replaced, and text that is no Unicode reported: a lone surrogate (YAML's "\\udce9", or
    os.environ's reading of a byte that is not UTF-8) reaches Cedar (`environment` is context.environment, the
    `agents:` registry actors' attributes), which cannot take it: every call was an internal_error."""
    if isinstance(node, str):
        text = _substitute_text(node, env, path, problems)
        if not _unicode(text):
            problems.append(f"{path or '(root)'}: {NOT_UNICODE}")
        return text
    if isinstance(node, list):
        return [_substitute(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            name = str(key)
            if not _unicode(name):
                problems.append(f"{path or '(root)'}: key {name!a} is not valid Unicode text")
                name = name.encode("utf-8", "backslashreplace").decode()
            where = f"{path}.{name}" if path else name
            _check_key(key, where, problems)
            out[key] = _substitute(value, env, where, problems)
        return out
    return node


def _check_key(key: Any, where: str, problems: list[str]) -> None:
    """Keys are not substituted, so a reference in one would stay as written: `tools: {${TOOL}:
    {sensitivity: restricted}}` labelled a tool named `${TOOL}`, which is none, and `config check` said OK."""
    if isinstance(key, str) and any(m.group(1) for m in _ENV_REF.finditer(key)):
        problems.append(f"{where}: a key is not read from the environment (${{...}} is replaced in values only); "
                        "write the key itself")


def _substitute_text(text: str, env: Mapping[str, str], path: str, problems: list[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            if match.group(0) == "${":  # no reference follows: never a literal by accident (docker compose refuses it)
                problems.append(f"{path or '(root)'}: {NO_REFERENCE}")
            return "${"  # `$${`
        value = env.get(name)
        # As in a shell and docker compose, `:-` stands in for an unset *or empty* variable.
        if default is not None and not value:
            return default
        if value is not None:
            return value
        problems.append(f"{path or '(root)'}: environment variable {name} is not set")
        return ""
    return _ENV_REF.sub(repl, text)


def shipped_policies() -> Path:
    """The shipped policy set: gateway/policies in an installed wheel (setup.py copies it there), else the
    checkout's top-level policies/ (editable installs and the source tree read it in place)."""
    packaged = resources.files("gateway").joinpath("policies")
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "policies"


def allow_all_policies() -> Path:
    """The policy set of an anonymous config that names no `policies.dir`: one permit of every request."""
    return Path(__file__).resolve().parents[1] / "authz" / "allow_all"


def _default_policies(data: dict[str, Any]) -> None:
    """A config file naming no `policies.dir`. With anonymous identity (the default mode), the allow-all set:
    the core issue's transparent proxy for local use, whose contract config has no `policies` section (and an
    anonymous principal gives policies nothing to decide on; the start-up log warns). Otherwise `policies/` in
    the working directory when there is one (the model's default), else the shipped set."""
    section = data.get("policies", {})
    if not isinstance(section, dict) or "dir" in section:
        return
    identity = data.get("identity")
    mode = identity.get("mode", "anonymous") if isinstance(identity, dict) else "anonymous"
    if mode == "anonymous":
        data["policies"] = {**section, "dir": str(allow_all_policies())}
    elif not Path("policies").is_dir():
        data["policies"] = {**section, "dir": str(shipped_policies())}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in the config are relative to the config file, not the working directory."""
    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str) and not os.path.isabs(section[key]):
            section[key] = str(base / section[key])

    fix(data.get("policies"), "dir")
    fix(data.get("policies"), "shadow_dir")
    fix(data.get("decision_log"), "path")
    fix(data.get("signing"), "key_dir")
    tls = (data.get("listen") or {}).get("tls") if isinstance(data.get("listen"), dict) else None
    for key in ("cert_file", "key_file", "client_ca_file"):
        fix(tls, key)
    identity = data.get("identity")
    for issuer in (identity or {}).get("issuers") or [] if isinstance(identity, dict) else []:
        fix(issuer, "jwks_file")
        fix(issuer, "pem_file")
    for upstream in data.get("upstreams") or []:
        if isinstance(upstream, dict):
            fix(upstream.get("credentials"), "value_file")
            fix(upstream, "cwd")


def parse_config(data: Any, *, env: Mapping[str, str] | None = None, base: Path | None = None,
                 source: str = "config") -> Config:
    """Validate an already-parsed YAML document. Raises ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(root): must be a mapping of sections (upstreams:, listen:, identity:, …), "
                           f"not {yaml_kind(data)}"], source)
    problems: list[str] = []
    written, data = data, _substitute(data, os.environ if env is None else env, "", problems)
    if base is not None:
        _resolve_paths(data, base)
    problems += key_problems(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += field_problems(exc, data, written)
        # Pydantic skips cross-field rules wherever a field inside failed; run them on the document so
        # they are listed with the field errors (a rule it did run gives the same line, kept once).
        problems += [f"{path_text(loc)}: {message}" for loc, message in document_rules(data)]
    if problems:  # a validator or rule may quote a value it refuses: never one from the environment
        raise ConfigError(hide_substituted(_unset_first(problems), written, data), source)
    return config


def _unset_first(problems: list[str]) -> list[str]:
    """Every problem once, in order, without what the field's validation said about the empty string an unset
    variable left there (or the text a `${` that starts no reference left): the reference is the problem."""
    def of_reference(problem: str) -> bool:
        return (": environment variable " in problem and problem.endswith(" is not set")) or \
            problem.endswith(f": {NO_REFERENCE}")
    unset = {p.partition(": ")[0] for p in problems if of_reference(p)}
    kept = [p for p in problems if p.partition(": ")[0] not in unset or of_reference(p)]
    return sorted(set(kept), key=kept.index)


def unreadable(exc: OSError | UnicodeDecodeError) -> str:
    """Why a text file could not be read, for a person: the OS's reason, or where it stops being UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    return exc.strerror or str(exc)


_MARK = "\ue000"  # private use: in no real config, and a plain-scalar character to YAML
_INDEX = 0xE001
_SPAN = 6000  # index characters (two per reference): 36 million references


def _shield_refs(text: str) -> tuple[str, dict[str, str]]:
    """Hide `${...}` references from the YAML parser. Inside a flow mapping (`{secret: ${SECRET}}`, as the
    interfaces contract writes it) the braces would end the mapping; each reference becomes a neutral token
    of the same length (so YAML's line and column of an error still point right), put back after parsing
    and substituted as before, never as YAML (an env value cannot change the document's structure)."""
    refs: dict[str, str] = {}

    def hide(match: re.Match[str]) -> str:
        n = len(refs)
        token = (_MARK + chr(_INDEX + n // _SPAN) + chr(_INDEX + n % _SPAN)).ljust(len(match.group(0)), _MARK)
        refs[token] = match.group(0)
        return token

    return _SHIELDED.sub(hide, text), refs


def _unshield(node: Any, refs: dict[str, str]) -> Any:
    if isinstance(node, str):
        if _MARK in node:
            for token, original in refs.items():
                node = node.replace(token, original)
        return node
    if isinstance(node, list):
        return [_unshield(v, refs) for v in node]
    if isinstance(node, dict):
        return {_unshield(k, refs): _unshield(v, refs) for k, v in node.items()}
    return node


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"(file): cannot read {path}: {unreadable(exc)}"], str(path)) from exc
    shielded, refs = _shield_refs(text) if "${" in text else (text, {})
    try:
        read, twice = load_listing_duplicates(shielded)
        data = _unshield(read, refs)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError([f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"], str(path)) from exc
    if isinstance(data, dict):
        _default_policies(data)
    try:
        config = parse_config(data, env=env, base=path.parent.resolve(), source=str(path))
    except ConfigError as exc:  # a key given twice is one problem among the others, each at its path
        raise ConfigError(twice + exc.problems, str(path)) from exc
    if twice:
        raise ConfigError(twice, str(path))
    return config
