"""Whether a concrete resource URI could have been expanded from an RFC 6570 level-1 URI template.

Only simple `{var}` expressions (level 1) are understood, the kind MCP servers list in
`resources/templates/list`. A string with any other expression (`{+path}`, `{?q}`, `{a,b}`) or with
unbalanced braces is not treated as a template: nothing matches it.
"""

from __future__ import annotations

import re
from typing import Final

_EXPRESSION: Final = re.compile(r"\{([^{}]*)\}")
_VARCHAR: Final = r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})"
_VARNAME: Final = re.compile(rf"{_VARCHAR}+(?:\.{_VARCHAR}+)*")
# What one `{var}` expands to: path-segment characters (RFC 3986 pchar). A level-1 expansion
# percent-encodes everything but unreserved characters; the other pchars are allowed as clients do not
# always encode them, but never `/`, `?` or `#`, which would let a value reach into another URI part.
_VALUE: Final = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*"


def template_pattern(template: str) -> re.Pattern[str] | None:
    """The pattern of every URI the level-1 template expands to, or None when it is not one."""
    parts: list[str] = []
    pos = 0
    for match in _EXPRESSION.finditer(template):
        literal = template[pos:match.start()]
        if "{" in literal or "}" in literal or not _VARNAME.fullmatch(match.group(1)):
            return None
        parts += [re.escape(literal), _VALUE]
        pos = match.end()
    tail = template[pos:]
    if not parts or "{" in tail or "}" in tail:
        return None
    return re.compile("".join(parts) + re.escape(tail))


def expands_to(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of the level-1 `template` (never for a string that is no template)."""
    pattern = template_pattern(template)
    return pattern is not None and pattern.fullmatch(uri) is not None
