"""Line numbers for policy and schema problems, which cedarpy reports without a source location.

A person fixing a policy directory needs `file:line`, not only the file: cedarpy's parse errors say what
is wrong (`unexpected token `}``) and its validation errors which policy (`policy3`), never where. So the
loader locates them itself:

- each policy's first line, by splitting the file into statements (`;` outside strings, comments and
  brackets): the n-th statement is the policy Cedar numbers n-th, as long as the counts agree;
- a syntax error's line, as the shortest prefix of whole lines that fails with the same error: Cedar's
  parser reads left to right, so a prefix that stops before the bad token fails otherwise (it ends early);
- a name an error quotes (an attribute, an action, a type), as the first line of the policy (or schema)
  that mentions it outside comments, else the policy's first line.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_END_OF_INPUT = "unexpected end of input"
_QUOTED = re.compile(r"`([^`]+)`")
_UNRESOLVED = re.compile(r"failed to resolve types?: (\S+)")
_OPEN, _CLOSE = "([{", ")]}"


def statement_lines(text: str) -> list[tuple[int, int]]:
    """(first line, last line), 1-based, of each `;`-terminated statement in a Cedar policy file."""
    spans: list[tuple[int, int]] = []
    line, depth, start, i = 1, 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char == '"':
            i, line = _skip_string(text, i + 1, line)
            start = start or line
            continue
        elif not char.isspace():
            start = start or line
            if char in _OPEN:
                depth += 1
            elif char in _CLOSE:
                depth = max(depth - 1, 0)
            elif char == ";" and depth == 0:
                spans.append((start, line))
                start = 0
        i += 1
    return spans


def _skip_string(text: str, i: int, line: int) -> tuple[int, int]:
    """Index after the string that opens before `i` (escapes honoured), and the line it ends on."""
    while i < len(text):
        char = text[i]
        if char == "\\":
            line += text[i + 1:i + 2] == "\n"
            i += 2
            continue
        if char == "\n":
            line += 1
        i += 1
        if char == '"':
            break
    return i, line


def syntax_error_line(text: str, parse: Callable[[str], object]) -> int | None:
    """The line of the error `parse` raises for `text` (None: it parses). A file that ends inside a
    statement is blamed on its last line, as the end of input is where the parser stopped."""
    lines = text.splitlines(keepends=True)

    def error(count: int) -> str | None:
        try:
            parse("".join(lines[:count]))
        except ValueError as exc:
            return str(exc)
        return None

    whole = error(len(lines))
    if whole is None:
        return None
    if _END_OF_INPUT in whole:
        return max((n for n, line in enumerate(lines, 1) if line.strip()), default=1)
    # The same error from fewer lines (earlier prefixes end early, or fail otherwise: a schema's
    # reference to a type declared further down) means the bad token is within them.
    low, high = 1, len(lines)
    while low < high:
        middle = (low + high) // 2
        if error(middle) == whole:
            high = middle
        else:
            low = middle + 1
    return low


def mentioned_line(message: str, text: str, first: int = 1, last: int | None = None) -> int | None:
    """The first line in first..last of `text` that mentions, outside a comment, the first name `message`
    quotes that any line mentions."""
    names = [m.group(1) for m in _QUOTED.finditer(message)] + [m.group(1) for m in _UNRESOLVED.finditer(message)]
    names = [n for n in names if not re.fullmatch(r"policy\d+", n)]
    lines = text.splitlines()
    span = range(first, min(last or len(lines), len(lines)) + 1)
    for name in names:  # in the message's order: what is wrong (`department`) before where (`Agent`)
        pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        found = next((number for number in span if pattern.search(_code(lines[number - 1]))), None)
        if found is not None:
            return found
    return None


def _code(line: str) -> str:
    """`line` without its `//` comment (a `//` inside a string, as in spiffe://, is not one)."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and line.startswith("//", i):
            return line[:i]
    return line
