"""Config problems in the file's words: pydantic's validation errors at the paths the file writes, with what each
value must be and what was written (a value from the environment named by its reference, never shown)."""

from __future__ import annotations

import ast
import datetime
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway.config.rules import RULE_ERROR

# A string literal as a problem quotes a value (Python's repr: either quote, backslash escapes).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
# A part of a value from the environment this long is named by its reference wherever a problem shows it; a
# shorter one may be any word of the message (as scrub_exact leaves values under 6 characters alone).
_HIDDEN_PART = 6


def path_text(parts: tuple[int | str, ...]) -> str:
    """A document path as problems name it: `upstreams[0].tools.get_stock`, `(root)` for the document itself."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"



def _document_loc(loc: tuple[int | str, ...], data: Any) -> tuple[int | str, ...]:
    """Pydantic's location less the labels it adds (union branches' model names and tags, validators), read
    against the document: a key the file wrote stays whatever it looks like (`GetStock`, `TZ`, `X-Static`)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part if isinstance(part, str) else str(part))  # `4:` is a key, not a list's [4]
            node = node[part]
        elif isinstance(node, dict) and (key := _key_by_repr(node, part)) is not None:
            out.append(_yaml_scalar(key))  # a date key: pydantic names it `datetime.date(2020, 1, 1)`
            node = node[key]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif not (isinstance(part, str) and (part[:1].isupper() or part.startswith(("function-", "literal["))
                                             or part == "[key]")):  # a mapping key's own error: the key's path
            out.append(part)  # a key the file lacks (Field required)
            node = None
    return tuple(out)


def field_problems(exc: ValidationError, data: Any, written: Any) -> list[str]:
    """Pydantic's errors in the file's words, at the paths the file writes; `written` is the document before its
    `${VAR}` references were replaced (a value from the environment is named by its reference, never shown)."""
    problems: list[str] = []
    for err in exc.errors():
        loc = _document_loc(err["loc"], data)
        if err["type"] == RULE_ERROR:
            problems += [f"{path_text(loc + rule_loc)}: {message}" for rule_loc, message in err["ctx"]["problems"]]
            continue
        if _of_non_text_key(err):
            continue  # listed by key_problems, at the key as the file writes it
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":  # pydantic's "Field required"
            msg = f"required: {_REQUIRED[loc]}" if loc in _REQUIRED else "required"
        elif err["type"] == "literal_error" and loc == ("store",):
            msg = "must be memory or {redis: {url: redis://host:6379/0}}"  # not only "Input should be 'memory'"
        elif err["type"] in ("tuple_type", "list_type"):  # pydantic's "a valid tuple": Python's word, not YAML's
            msg = f"must be a list, not {yaml_kind(err.get('input'))}"
        elif err["type"] in ("dict_type", "model_type"):  # "... or instance of PoliciesConfig": a class name
            msg = f"must be a mapping (key: value), not {yaml_kind(err.get('input'))}"
        elif err["type"] in _SCALAR_TYPES:  # "Input should be a valid string", "… for <class 'pathlib.Path'>"
            what, show = _SCALAR_TYPES[err["type"]]
            given = err.get("input")
            msg = f"must be {what}, not {_shown(given, _at(written, loc)) if show else yaml_kind(given)}"
        elif msg.startswith("Input should be ") and "input" in err:  # a bound or a choice: and what was written
            msg = f"must be {msg.removeprefix('Input should be ')}, not {_shown(err['input'], _at(written, loc))}"
        problems.append(f"{path_text(loc)}: {msg}")
    return problems


def _of_non_text_key(err: Any) -> bool:
    """Whether pydantic's error is about a mapping key that is no string (its loc then names it as str(key))."""
    return bool(err["type"] == "invalid_key" or
                (err["loc"][-1:] == ("[key]",) and not isinstance(err.get("input"), str)))


def key_problems(node: Any, path: tuple[int | str, ...] = ()) -> list[str]:
    """Keys YAML read as no text (`4:` a number, `true:`, `~:`): no section, field or name is one."""
    problems: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            written = key if isinstance(key, str) else _yaml_scalar(key)
            if not isinstance(key, str):
                problems.append(f"{path_text((*path, written))}: a key must be text, not {yaml_kind(key)} "
                                f"(quote it: '{written}')")
            problems += key_problems(value, (*path, written))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += key_problems(value, (*path, index))
    return problems


def _key_by_repr(node: dict[Any, Any], part: Any) -> Any:
    """The key of `node` that is no string and that pydantic's location names by its repr, if any."""
    return next((key for key in node if not isinstance(key, str) and repr(key) == part), None)


def _yaml_scalar(value: Any) -> str:
    """A scalar as YAML writes it (true, null, 4, 1.5)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


_REQUIRED = {("upstreams",): "the MCP servers the gateway fronts, a list of {name, url or command}"}
# pydantic's error type → what the value must be, and whether to show the value written (else only its kind).
_SCALAR_TYPES = {"string_type": ("text", False), "path_type": ("a path", False),
                 "int_type": ("a whole number", True), "int_parsing": ("a whole number", True),
                 "int_from_float": ("a whole number", True),
                 # a float past 2**63 (`1.0e+308`): pydantic's "Unable to parse input string …", though none was
                 "int_parsing_size": ("a whole number", True), "float_type": ("a number", True),
                 "float_parsing": ("a number", True), "bool_type": ("true or false", True),
                 "bool_parsing": ("true or false", True)}


def _at(node: Any, loc: tuple[int | str, ...]) -> Any:
    """The value at a document path, or None."""
    for part in loc:
        if isinstance(node, dict):
            # `4:` is read as the number 4; only ASCII digits are one to int() ('²' is a digit to isdigit()).
            number = isinstance(part, str) and part.isascii() and part.isdigit()
            node = node.get(part, node.get(int(part)) if number else None)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _shown(value: Any, written: Any = None) -> str:
    """A scalar as written (a string quoted, cut at 40 characters); a list or mapping by its kind; a value an
    `${VAR}` reference gave by that reference (it may be a secret in the wrong field)."""
    if isinstance(written, str) and "${" in written:
        return f"what {written[:60]!r} gives"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else yaml_kind(value)


def hide_substituted(problems: list[str], written: Any, data: Any) -> list[str]:
    """`problems` with each value an `${VAR}` reference gave named by that reference wherever a message shows it.
    `_shown` does so for pydantic's messages; the field validators and document rules quote the value they refuse
    themselves (`not an origin: '…'`, `(got '…')`), and a secret referenced in the wrong field reached config
    check, the log and /readyz. `written`: the document before substitution, `data` after."""
    given = sorted(_substituted(written, data), key=lambda pair: len(pair[0]), reverse=True)
    return [_hidden(problem, given) for problem in problems] if given else problems


def _substituted(written: Any, data: Any) -> list[tuple[str, str]]:
    """(value, reference as written) for each string of the document an `${VAR}` reference changed."""
    if isinstance(written, str):
        changed = "${" in written and isinstance(data, str) and data not in ("", written)
        return [(data, written)] if changed else []
    pairs: list[tuple[str, str]] = []
    if isinstance(written, dict) and isinstance(data, dict):
        for key, value in written.items():
            if key in data:
                pairs += _substituted(value, data[key])
    elif isinstance(written, list) and isinstance(data, list):
        for value, item in zip(written, data, strict=False):
            pairs += _substituted(value, item)
    return pairs


def _hidden(problem: str, given: list[tuple[str, str]]) -> str:
    """One problem with the values in `given` named by their references: a quoted value that is one of them (or a
    part of one, cut as `not a pin: '…'[:80]` cuts it), then any of them left in the text as it is."""
    where, colon, message = problem.partition(": ")  # the path: keys are never substituted

    def named(match: re.Match[str]) -> str:
        try:
            quoted = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            return match.group(0)
        text = quoted.removesuffix("…") if isinstance(quoted, str) else ""
        exact = [reference for value, reference in given if text == value]  # before a longer one holding it
        parts = [reference for value, reference in given if len(text) >= _HIDDEN_PART and text in value]
        return f"what {(exact or parts)[0][:60]!r} gives" if text and (exact or parts) else match.group(0)

    message = _QUOTED.sub(named, message)
    for value, reference in given:
        for shown in {value, value.strip()}:
            if len(shown) >= _HIDDEN_PART and shown in message:
                message = message.replace(shown, f"what {reference[:60]!r} gives")
    return where + colon + message


def yaml_kind(value: Any) -> str:
    """What a YAML value is, in YAML's words."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime.date):  # `2020-01-01` unquoted (a datetime is a date too)
        return "a date"
    if isinstance(value, bytes):  # `!!binary`
        return "binary data"
    if isinstance(value, set | frozenset):  # `!!set`
        return "a set"
    return "a mapping" if isinstance(value, Mapping) else "a list"
