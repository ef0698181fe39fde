"""Typed Cedar schema fragments from the upstreams' MCP tool input schemas (`customs policy schema`).

All tools share `Action::"call_tool"`, so `context.args` has one type: `Args`, the union of every
tool's arguments, each optional. A per-tool record type (`type <upstream>_<tool>_args`) documents
each tool. An argument two tools type differently is left out of `Args` (with a comment), so a policy
reading it fails validation instead of guessing. JSON Schema → Cedar: string → String,
integer/number → Long (fractional numbers arrive as `decimal`, see docs/policies.md), boolean → Bool,
array → Set<item>, object → record; null in a type list is ignored; `enum`/`const` by their values;
local `$ref`s (`#/$defs/...`, as model-generated schemas type nested objects) are followed; anything
else (and an argument with no single Cedar type) is left out of `Args`, with a comment.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.authz.casefields import CaseError
from gateway.authz.entities import DEFAULT_BOUNDS

BEGIN = "// BEGIN GENERATED ARGS"
END = "// END GENERATED ARGS"
# Containers as deep as the argument conversion keeps them (entities.Bounds.max_depth, which counts the
# arguments record as level 1): a field typed deeper would never reach a policy.
_MAX_DEPTH = DEFAULT_BOUNDS.max_depth - 1
_UNTYPED = "no single Cedar type"
_UNNAMED = "a name that is not valid Unicode (no Cedar string holds it)"
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
_SCALARS = {"string": "String", "integer": "Long", "number": "Long", "boolean": "Bool"}


def cedar_type(schema: Any, depth: int = 0, root: Any = None, refs: frozenset[str] = frozenset()) -> str | None:
    """The Cedar type of a JSON Schema, or None when it has no single Cedar type. `root` is the document
    local `$ref`s point into (the tool's inputSchema); `refs` those being expanded (a cycle has no type)."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or ref in refs:
            return None
        return cedar_type(_resolve(root, ref), depth, root, refs | {ref})
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        return _untyped(schema, depth, root, refs)
    if kind in _SCALARS:
        return _SCALARS[kind]
    if depth >= _MAX_DEPTH:
        return None
    if kind == "array":
        item = cedar_type(schema.get("items"), depth + 1, root, refs)
        return f"Set<{item}>" if item else None
    if kind == "object":
        return record_type(schema.get("properties"), depth + 1, root, refs)
    return None


def _resolve(root: Any, ref: str) -> Any:
    """The subschema a local JSON pointer (`#/$defs/Item`) names in root; None for any other reference."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _value_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Long"
    return "String" if isinstance(value, str) else None


def _untyped(schema: dict[str, Any], depth: int, root: Any, refs: frozenset[str]) -> str | None:
    values = schema.get("enum") if "const" not in schema else [schema["const"]]
    if isinstance(values, list) and values:
        # null is the null alternative (the conversion drops it), as in `type: [..., "null"]`
        kinds = {_value_type(v) for v in values if v is not None}
        return kinds.pop() if len(kinds) == 1 else None
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        # allOf only as a wrapper of one schema (older pydantic puts a described $ref there); an
        # intersection of several has no Cedar counterpart.
        if isinstance(options, list) and options and (key != "allOf" or len(options) == 1):
            found = {cedar_type(o, depth, root, refs) for o in options
                     if not (isinstance(o, dict) and o.get("type") == "null")}
            return found.pop() if len(found) == 1 and None not in found else None
    return None


def _escaped(text: str) -> str:
    """`text` as the inside of a Cedar string literal (or a one-line comment): Cedar's own escapes, `\\u{hex}`
    for anything else that is not printable; printable non-ASCII stays as it is. (JSON's `\\u00fc` and `\\b`
    are not Cedar escapes: one non-ASCII argument name made the whole schema fail to parse.)"""
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else f"\\u{{{ord(c):x}}}") for c in text)


def _nameable(name: str) -> bool:
    """A lone surrogate (JSON may carry `\\ud800`) is in no Cedar string, so no policy can read it."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in name)


def _attr(name: str) -> str:
    return f'"{_escaped(name)}"'


def record_type(properties: Any, depth: int = 0, root: Any = None, refs: frozenset[str] = frozenset()) -> str | None:
    if not isinstance(properties, dict):
        return "{}"
    fields = []
    for name in sorted(properties):
        typ = cedar_type(properties[name], depth, root, refs) if _nameable(str(name)) else None
        if typ is not None:
            fields.append(f"{_attr(str(name))}?: {typ}")
    return "{ " + ", ".join(fields) + " }" if fields else "{}"


def _ident(upstream: str, tool: str, taken: set[str]) -> str:
    """A Cedar type name for a tool's record: a valid identifier (upstream names may start with a
    digit) that no other tool took (`get-x` and `get_x` map to the same characters)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", f"{upstream}_{tool}_args")
    if not re.match(r"[A-Za-z_]", base):
        base = "t_" + base
    ident, n = base, 2
    while ident in taken:
        ident, n = f"{base}_{n}", n + 1
    taken.add(ident)
    return ident


def schema_from_input_schemas(tools: dict[str, list[dict[str, Any]]]) -> str:
    """The generated block (between the BEGIN/END markers) for {upstream: [MCP tool definitions]}."""
    merged: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    conflicts: dict[str, set[str]] = {}
    idents: set[str] = set()
    lines = [BEGIN, "// Generated by `customs policy schema` from the upstreams' tool input schemas."]
    for upstream in sorted(tools):
        for tool in sorted(tools[upstream], key=lambda t: str(t.get("name"))):
            name = str(tool.get("name", ""))
            root = tool.get("inputSchema") or {}
            props = root.get("properties") or {}
            lines.append(f"type {_ident(upstream, name, idents)} = {record_type(props, 0, root)};  "
                         f"// {_escaped(f'{upstream}/{name}')}")
            for arg in sorted(props):
                # An argument one tool cannot type is left out as a conflict is: typing it by the other
                # tools would let that tool's values reach policies as something the schema does not say.
                typ = (cedar_type(props[arg], 0, root) or _UNTYPED) if _nameable(str(arg)) else _UNNAMED
                owners.setdefault(arg, []).append(f"{_escaped(f'{upstream}/{name}')}: {typ}")
                if merged.setdefault(arg, typ) != typ or typ in (_UNTYPED, _UNNAMED):
                    conflicts.setdefault(arg, set()).add(typ)
    lines.append("// Arguments of every tool (each optional: tools differ).")
    lines.append("type Args = {")
    for arg in sorted(merged):
        if merged[arg] in (_UNTYPED, _UNNAMED) and conflicts.get(arg) == {merged[arg]}:
            tools_of = "; ".join(o.rsplit(": ", 1)[0] for o in owners[arg])
            lines.append(f"  // {_attr(arg)} left out: {merged[arg]} ({tools_of})")
        elif arg in conflicts:
            lines.append(f"  // {_attr(arg)} left out: conflicting types ({'; '.join(owners[arg])})")
        else:
            lines.append(f"  {_attr(arg)}?: {merged[arg]},")
    lines.extend(["};", END])
    return "\n".join(lines)


_OWN_ARGS = re.compile(r"^\s*type\s+Args\s*=", re.MULTILINE)


def apply_block(base_schema: str, block: str) -> str:
    """Replace the generated block of a schema (or append it when the schema has none). ValueError when the
    markers are unpaired, or when there are none and the schema declares its own `Args` (a second one would
    not parse)."""
    start, end = base_schema.find(BEGIN), base_schema.find(END)
    if start == -1 and end == -1:
        if _OWN_ARGS.search(base_schema):
            raise ValueError(f"it declares `type Args` outside `{BEGIN}` ... `{END}` markers, so a generated one "
                             "would declare it twice; put those two lines around its own `Args` to have it replaced")
        return base_schema.rstrip("\n") + "\n\n" + block + "\n"
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"it needs both `{BEGIN}` and, after it, `{END}` (one line each) around the generated "
                         "block")
    return base_schema[:start] + block + base_schema[end + len(END):]


def check_tool(tool: dict[str, Any], where: str) -> None:
    """What the generator reads of an MCP Tool: a name, and an inputSchema whose properties map names to schemas."""
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise CaseError(f"{where}: a tool must have a non-empty string 'name'")
    schema = tool.get("inputSchema")
    if schema is not None and not isinstance(schema, dict):
        raise CaseError(f"{where} ({tool['name']}): inputSchema must be a JSON Schema object")
    properties = (schema or {}).get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise CaseError(f"{where} ({tool['name']}): inputSchema.properties must map argument names to schemas")
