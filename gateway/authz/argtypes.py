"""Check a request's context against the types the schema declares, so a mistyped argument denies.

Cedar only reports an evaluation error when an operator meets a value it cannot take (`<` on a
decimal, `like` on a Long). Equality and set membership take any value: `context.args.amounts
.contains(5)` on the Set of Strings an array mixing kinds becomes (`[5, 2.5]` → `{"5", "2.5"}`)
is simply false, and so is `context.args.amount == 5` on a decimal or `["666"].contains(
context.args.account)` on a Long, so a forbid written for the declared type silently never fires.
The decision therefore checks every value the policies read against the action's declared context
type and denies on a mismatch, as it denies on an evaluation error. Cedar's own request validation
(a schema passed to `is_authorized`) is not used: it refuses any attribute the schema does not name,
and arguments the schema leaves out are normal (a policy cannot read them: validation refuses it).

cedarpy has no schema-to-JSON call, so the declared types are read from Cedar's canonical rendering
of the parsed schema (`str(schema)`), as `argnames` reads `Args`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import cedarpy

# A declared type: ("Long"|"String"|"Bool"|"decimal"|"entity"|"other", None), ("set", elem),
# ("record", {name: type}), or ("ref", full name) until resolved. "other" (an extension type no
# argument converts to, other than decimal) and "entity" fit no converted value; "any" fits all.
Type = tuple[str, Any]
_ANY: Type = ("any", None)
_PRIMS = {"Long": "Long", "String": "String", "Bool": "Bool", "decimal": "decimal"}
_TOKEN = re.compile(r'\s+|//[^\n]*|"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*|.')


class _Parser:
    """Declarations of the rendering: common types, entity names, and each action's context type."""

    def __init__(self, text: str) -> None:
        self.tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("//")]
        self.pos = 0
        self.types: dict[str, Type] = {}
        self.entities: set[str] = set()
        self.contexts: dict[str, Type] = {}
        self.shapes: dict[str, Type] = {}  # entity type (empty namespace) -> its attributes' record type
        self.parents: dict[str, set[str]] = {}  # entity type (empty namespace) -> the types it may be `in`
        self.applies: dict[str, tuple[list[str], list[str]]] = {}  # action -> (principal types, resource types)

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if not token or (expected is not None and token != expected):
            raise ValueError(f"expected {expected or 'a token'} at token {self.pos}, found {token!r}")
        self.pos += 1
        return token

    def name(self) -> str:
        token = self.take()
        return str(json.loads(token)) if token.startswith('"') else token

    def annotations(self) -> None:
        while self.peek() == "@":
            self.take("@")
            self.take()
            if self.peek() == "(":
                self.take("(")
                self.skip_to(")")

    def skip_to(self, end: str) -> None:
        """Skip past the next `end` at bracket depth 0."""
        depth = 0
        while True:
            token = self.take()
            if token == end and depth == 0:
                return
            if token in ("{", "[", "<", "("):
                depth += 1
            elif token in ("}", "]", ">", ")"):
                depth -= 1

    def declarations(self, prefix: str, until: str = "") -> None:
        while self.peek() != until:
            self.annotations()
            keyword = self.take()
            if keyword == "namespace":
                space = self.take()
                self.take("{")
                self.declarations(f"{space}::", "}")
                self.take("}")
            elif keyword == "type":
                name = prefix + self.take()
                self.take("=")
                self.types[name] = self.type(prefix)
                self.take(";")
            elif keyword == "entity":
                names = [self.take()]
                while self.peek() == ",":
                    self.take(",")
                    names.append(self.take())
                self.entities.update(prefix + n for n in names)
                self.entity_shape(prefix, names)
            elif keyword == "action":
                self.action(prefix)
            else:
                raise ValueError(f"unexpected {keyword!r}")

    def entity_shape(self, prefix: str, names: list[str]) -> None:
        """`[in [..]] [=] [{attributes}] [tags T] | enum [..]` up to the `;`."""
        while self.peek() not in (";", ""):
            if self.peek() == "{":
                shape = self.type(prefix)
                if not prefix:
                    self.shapes.update(dict.fromkeys(names, shape))
            elif (token := self.take()) == "tags":
                self.type(prefix)
            elif token == "in":
                parents = self.names()
                if not prefix:
                    for name in names:
                        self.parents.setdefault(name, set()).update(parents)
            elif self.peek() == "[":
                self.skip_value()
        self.take(";")

    def names(self) -> list[str]:
        """`[A, B]` or a lone `A`: entity type names."""
        if self.peek() != "[":
            return [self.take()]
        self.take("[")
        out: list[str] = []
        while self.peek() != "]":
            out.append(self.take())
            if self.peek() == ",":
                self.take(",")
        self.take("]")
        return out

    def action(self, prefix: str) -> None:
        names = [self.name()]
        while self.peek() == ",":
            self.take(",")
            names.append(self.name())
        context: Type = ("record", {})
        applies: dict[str, list[str]] = {"principal": [], "resource": []}
        while self.peek() not in (";", ""):
            if self.take() != "appliesTo":
                continue
            self.take("{")
            while self.peek() != "}":
                key = self.take()
                self.take(":")
                if key == "context":
                    context = self.type(prefix)
                elif key in applies:
                    applies[key] = self.names()
                else:
                    self.skip_value()
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        self.take(";")
        if not prefix:  # the gateway decides actions of the empty namespace only
            self.contexts.update(dict.fromkeys(names, context))
            self.applies.update(dict.fromkeys(names, (applies["principal"], applies["resource"])))

    def skip_value(self) -> None:
        if self.peek() == "[":
            self.take("[")
            self.skip_to("]")
        else:
            self.take()

    def type(self, prefix: str) -> Type:
        if self.peek() == "{":
            self.take("{")
            fields: dict[str, Type] = {}
            while self.peek() != "}":
                self.annotations()
                field = self.name()
                if self.peek() == "?":
                    self.take("?")
                self.take(":")
                fields[field] = self.type(prefix)
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
            return ("record", fields)
        name = self.take()
        if name in ("Set", "__cedar::Set"):
            self.take("<")
            element = self.type(prefix)
            self.take(">")
            return ("set", element)
        return ("ref", (prefix, name))

    def resolve(self, typ: Type, seen: frozenset[str] = frozenset()) -> Type:
        kind, inner = typ
        if kind == "set":
            return ("set", self.resolve(inner, seen))
        if kind == "record":
            return ("record", {k: self.resolve(v, seen) for k, v in inner.items()})
        if kind != "ref":
            return typ
        prefix, name = inner
        bare = name.removeprefix("__cedar::")
        for full in (prefix + name, name):  # a name resolves in its namespace first, then globally
            if full in self.types and full not in seen:
                return self.resolve(self.types[full], seen | {full})
            if full in self.entities:
                return ("entity", full)
        if bare in _PRIMS:
            return (_PRIMS[bare], None)
        return ("other", name) if bare in ("ipaddr", "datetime", "duration") else _ANY


def _parsed(schema: cedarpy.Schema) -> _Parser | None:
    parser = _Parser(str(schema))
    try:
        parser.declarations("")
    except (ValueError, json.JSONDecodeError):
        return None
    return parser


def context_types(schema: cedarpy.Schema) -> dict[str, Type] | None:
    """Each action's declared context type; None when the rendering cannot be read (nothing is checked)."""
    parser = _parsed(schema)
    return None if parser is None else {action: parser.resolve(typ) for action, typ in parser.contexts.items()}


def agent_types(schema: cedarpy.Schema) -> dict[str, Type] | None:
    """The declared type of each attribute of `Agent` ({} when it declares none); None when the rendering cannot
    be read (nothing is converted or checked)."""
    parser = _parsed(schema)
    if parser is None:
        return None
    shape = parser.resolve(parser.shapes.get("Agent", ("record", {})))
    return dict(shape[1]) if shape[0] == "record" else {}


def approval_args_type(schema: cedarpy.Schema) -> Type | None:
    """The declared type of the `Approval` entity's `args` attribute (what `resource.args` of `approve` is); None
    when the schema declares none or its rendering cannot be read (nothing is checked)."""
    parser = _parsed(schema)
    if parser is None:
        return None
    shape = parser.resolve(parser.shapes.get("Approval", ("record", {})))
    args = shape[1].get("args") if shape[0] == "record" else None
    return None if args is None or args[0] == "any" else args


def describe(value: Any) -> str:
    """The Cedar type of a converted value, for error messages."""
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Long"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        kinds = sorted({describe(v) for v in value})
        return f"Set<{' | '.join(kinds)}>" if kinds else "Set"
    if isinstance(value, dict):
        return "decimal" if "__extn" in value else "record"
    return type(value).__name__


def render(typ: Type) -> str:
    kind, inner = typ
    if kind == "set":
        return f"Set<{render(inner)}>"
    if kind == "record":
        return "record"
    return str(inner) if kind in ("entity", "other") else kind


def mismatches(value: Any, typ: Type, path: tuple[str, ...], out: list[str]) -> None:
    """Append `path: ...` for every present value that does not fit its declared type. Attributes the
    type does not name are not checked (no validated policy can read them), nor are missing ones
    (reading a missing attribute is already an evaluation error)."""
    kind, inner = typ
    if kind == "any":
        return
    if kind == "record" and type(value) is dict and "__extn" not in value:
        for name, sub in value.items():
            declared = inner.get(name)
            if declared is not None:
                mismatches(sub, declared, (*path, name), out)
        return
    if kind == "set" and type(value) is list:
        exact = _EXACT.get(inner[0])
        if exact is not None:  # a Set of scalars, the common case: one type test per item
            if any(type(item) is not exact for item in value):
                out.append(_mismatch(path, value, typ))
            return
        if any(_fits(item, inner) is False for item in value):
            out.append(_mismatch(path, value, typ))
        else:
            for item in value:
                mismatches(item, inner, (*path, "[item]"), out)
        return
    if _fits(value, typ) is False:
        out.append(_mismatch(path, value, typ))


def _mismatch(path: tuple[str, ...], value: Any, typ: Type) -> str:
    text = "".join(p if p == "[item]" else f".{p}" if p.isidentifier() else f"[{json.dumps(p)}]" for p in path)
    return f"context{text} is {describe(value)}, the schema declares {render(typ)}"


_EXACT: dict[str, type] = {"Long": int, "String": str, "Bool": bool}  # converted values are exactly these


def _fits(value: Any, typ: Type) -> bool | None:
    """Whether a value's own kind fits (None: a container, checked item by item)."""
    kind = typ[0]
    if kind == "any":
        return True
    if kind in ("set", "record"):
        ok = isinstance(value, list) if kind == "set" else isinstance(value, dict) and "__extn" not in value
        return None if ok else False
    exact = _EXACT.get(kind)
    if exact is not None:
        return type(value) is exact
    if kind == "decimal":
        return isinstance(value, dict) and value.get("__extn", {}).get("fn") == "decimal"
    return False  # an entity or another extension type: no converted argument is one


def check(context: dict[str, Any], typ: Type | None) -> list[str]:
    """The type mismatches of a request's context (empty: it fits, or the action's type is unknown)."""
    if typ is None:
        return []
    out: list[str] = []
    mismatches(context, typ, (), out)
    return out


def declared_attributes(schema: cedarpy.Schema) -> tuple[dict[str, Type], frozenset[str]] | None:
    """Each action's resolved context type and the names of every attribute some entity type declares; None when
    the rendering cannot be read (nothing is checked)."""
    parser = _parsed(schema)
    if parser is None:
        return None
    names: set[str] = set()
    for shape in parser.shapes.values():
        kind, fields = parser.resolve(shape)
        if kind == "record":
            names.update(fields)
    return {action: parser.resolve(typ) for action, typ in parser.contexts.items()}, frozenset(names)


Applies = dict[str, tuple[list[str], list[str]]]  # action -> (principal types, resource types)


def entity_relations(schema: cedarpy.Schema) -> tuple[dict[str, frozenset[str]], Applies] | None:
    """(each entity type's own type and every type it may be a descendant of, each action's (principal types,
    resource types)); None when the rendering cannot be read (nothing is checked)."""
    parser = _parsed(schema)
    if parser is None:
        return None
    ancestors: dict[str, frozenset[str]] = {}
    for name in parser.entities:
        seen, todo = {name}, [name]
        while todo:
            for parent in parser.parents.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        ancestors[name] = frozenset(seen)
    return ancestors, parser.applies
