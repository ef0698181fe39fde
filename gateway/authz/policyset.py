"""Load a policy directory (`*.cedar` + `schema.cedarschema`) into parsed handles, validated, or list every problem.

A directory is loaded whole or not at all: each file is parsed on its own (so a syntax error names its
file), then the concatenated set is validated against the schema (and every argument a policy reads on
`context.args` must be named by the schema's `Args`, see argnames), and every policy must carry a unique
`@id` annotation (decisions and the decision log name policies by it). A policy may also carry
`@quorum("N")`: a call it holds for approval needs N distinct approvers. The version is a hash of the
texts: approvals remember the version they were granted under.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import cedarpy

from gateway.authz.argnames import policy_order, unknown_args, walk
from gateway.authz.argtypes import Type, agent_types, approval_args_type, context_types
from gateway.authz.attrnames import unknown_attrs
from gateway.authz.entitylits import entity_problems
from gateway.authz.membership import membership_problems
from gateway.authz.sourcelines import mentioned_line, statement_lines, syntax_error_line
from gateway.authz.timelits import time_problems
from gateway.authz.valuelits import value_problems

log = logging.getLogger("customs.authz")

SCHEMA_FILE = "schema.cedarschema"
# The set of an anonymous config naming no policies.dir (gateway/config/load.py): one permit of everything.
ALLOW_ALL_DIR = Path(__file__).resolve().parent / "allow_all"
MAX_QUORUM = 20  # more distinct approvers than this for one call is a typo, not a policy
Parsed = list[tuple[Path, str, list[dict[str, str]]]]  # file, text, each static policy's annotations
Place = tuple[Path, str, int, int]  # a policy's file, that file's text, its first and last line (0: unknown)


class PolicyLoadError(Exception):
    """A policy directory that cannot be used; `problems` are `file: message` lines, all of them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class LoadedPolicies:
    """One immutable, validated policy set: swapped atomically, never mutated."""

    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    version: str
    source: str
    files: tuple[str, ...]
    id_by_internal: dict[str, str] = field(default_factory=dict)  # policy0 -> @id
    quorum_by_id: dict[str, int] = field(default_factory=dict)  # @id -> its @quorum("N"), where given
    # What of the context some policy reads (see context_tree); None: a policy uses `context` as a whole.
    context_reads: Tree | None = None
    # Each action's declared context type: a value that does not fit it denies (see argtypes).
    context_types: dict[str, Type] = field(default_factory=dict)
    # The declared types of Agent's attributes: principals' and actors' values are fitted to them (agentattrs).
    agent_types: dict[str, Type] | None = None
    # (what of `resource.args` the policies read (None: all of it), the declared type of Approval's `args`): a held
    # call's argument that does not fit denies (see evaluate.approve_args_mismatches); None: none is read.
    approval_args: tuple[Tree | None, Type] | None = None

    @functools.cached_property  # asked on every decision; the set never changes
    def context_keys(self) -> frozenset[str] | None:
        """The top-level context attributes some policy reads (None: all of them)."""
        return None if self.context_reads is None else frozenset(self.context_reads)

    @property
    def reads_no_context(self) -> bool:
        """No policy reads the context: nothing of the call beyond principal, action and tool can matter."""
        return self.context_reads is not None and not self.context_reads

    def __len__(self) -> int:
        return len(self.id_by_internal)

    def name(self, internal_id: str) -> str:
        return self.id_by_internal.get(internal_id, internal_id)

    def describe_error(self, message: str) -> str:
        return rename_ids(message, self.id_by_internal)


def rename_ids(message: str, id_by_internal: dict[str, str]) -> str:
    """Cedar's error text with internal ids (`policy3`) replaced by their `@id` names."""
    for internal, name in id_by_internal.items():
        message = message.replace(f"`{internal}`", f"`{name}`")
    return message


Tree = dict[str, "Tree | None"]  # attribute name -> what of its value is read (None: all of it)


def context_tree(est: Any, var: str = "context") -> Tree | None:
    """The parts of the context a policy set can see, from its JSON form (EST), as a tree of attribute paths.

    Cedar has no way to reach an attribute without naming it, so what lies outside this tree cannot
    change a decision and need not be sent (parsing the context is most of a decision's cost, and a
    context that differs only in unread parts decides like one seen before). `context.task.totals.amount`
    reads one leaf; `context has task` only needs `task` to be there; any other use of a context value
    (compared, passed to a method such as `containsAny`) reads all of it. A use of `context` itself as a
    whole value returns None: send everything. `var` = "resource": what of the resource's attributes is read.
    """
    tree: Tree = {}
    whole = False

    def mark(path: list[str], *, presence: bool) -> None:
        nonlocal whole
        if not path:
            whole = True
            return
        node = tree
        for name in path[:-1]:
            child = node.get(name, {})
            if child is None:
                return  # already read whole
            node[name] = child
            node = child
        last = path[-1]
        if presence:
            node.setdefault(last, {})
        else:
            node[last] = None

    def visit(node: dict[str, Any]) -> Iterable[Any] | None:
        path = _context_path(node, var)
        if path is not None:
            mark(path, presence=False)
            return ()
        step = node.get("has")
        if len(node) == 1 and _is_step(step):
            left = _context_path(step["left"], var)
            if left is not None:
                mark([*left, str(step["attr"])], presence=True)
                return ()
            return (step["left"],)
        if len(node) == 1 and "Record" in node and isinstance(node["Record"], dict):
            return node["Record"].values()  # field names are data, never operators
        return None

    walk(est, visit)
    return None if whole else tree


def _is_step(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and "left" in value and isinstance(value.get("attr"), str)


def _context_path(node: Any, var: str = "context") -> list[str] | None:
    """`context` → [], `context.a.b` → ["a", "b"]; anything else → None (likewise for another `var`)."""
    names: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        if node.get("Var") == var:
            return names[::-1]
        step = node.get(".")
        if not _is_step(step):
            return None
        names.append(step["attr"])
        node = step["left"]
    return None


def prune(value: Any, tree: Tree) -> Any:
    """`value` (a context record) with only what `tree` names (a record read for presence becomes `{}`)."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for name, sub in tree.items():
        if name in value:
            out[name] = value[name] if sub is None else prune(value[name], sub)
    return out


def policy_files(directory: Path) -> list[Path]:
    """The directory's policy files, `*.cedar` as a shell reads it: a hidden file is none. Editors and archivers
    leave such files beside the real ones (Emacs' lock `.#tools.cedar`, a dangling symlink while a change is
    unsaved; macOS' `._tools.cedar` in a tarball, binary), and read as policies they failed every load."""
    return sorted(path for path in directory.glob("*.cedar") if not path.name.startswith("."))


# (path, inode, mtime_ns, ctime_ns, size) of each file a load reads.
Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def fingerprint(*dirs: Path | None) -> Fingerprint:
    """What every file a load reads is now: a change here means reload. The inode and ctime count as well as the
    mtime and size: a release swapped in under the same path (a symlink moved to another directory) may hold files
    of equal times and sizes (reproducible builds fix every mtime; a one-character change keeps a size)."""
    out: list[tuple[str, int, int, int, int]] = []
    for directory in dirs:
        if directory is None:
            continue
        try:
            paths = sorted([*policy_files(directory), directory / SCHEMA_FILE])
        except OSError:
            continue
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                out.append((str(path), -1, -1, -1, -1))
                continue
            out.append((str(path), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size))
    return tuple(out)


def policy_text(path: str | Path) -> str:
    """A policy or schema file's text. A leading UTF-8 byte order mark (Windows editors write one) is no part
    of it: Cedar reads it as a token, a `syntax error: invalid token` on line 1 that nobody can see."""
    return Path(path).read_text(encoding="utf-8-sig")


def _read(path: Path, problems: list[str]) -> str | None:
    try:
        return policy_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None


def _annotations(text: str) -> list[dict[str, str]]:
    """The annotations (`@id`, `@quorum`, ...) of each static policy in `text`, in source order."""
    est = json.loads(cedarpy.policies_to_json_str(text))
    static = est.get("staticPolicies", {})
    ordered = sorted(static, key=lambda pid: int(pid[len("policy"):]) if pid[len("policy"):].isdigit() else 0)
    return [dict(static[pid].get("annotations") or {}) for pid in ordered]


def _parse_files(paths: list[Path], problems: list[str]) -> Parsed:
    parsed: Parsed = []
    for path in paths:
        text = _read(path, problems)
        if text is None:
            continue
        try:
            single = cedarpy.PolicySet.from_str(text)
            if single.templates():
                slot = mentioned_line("`?principal` `?resource`", text)
                problems.append(f"{_at(path, slot)}: templates (?principal/?resource) are not supported")
                continue
            parsed.append((path, text, _annotations(text)))
        except ValueError as exc:
            problems.append(f"{_at(path, syntax_error_line(text, cedarpy.PolicySet.from_str))}: syntax error: {exc}")
    return parsed


def _at(path: Path | str, line: int | None) -> str:
    """`file:line`, or the file alone when the line is not known."""
    return f"{path}:{line}" if line else str(path)


def _places(path: Path, text: str, count: int) -> list[Place]:
    """Where each of the `count` policies of a file is, as far as its statements can be told apart."""
    spans = statement_lines(text)
    if len(spans) != count:  # split otherwise than Cedar reads it: name the file alone
        spans = [(0, 0)] * count
    return [(path, text, first, last) for first, last in spans]


def _id_map(parsed: Parsed, problems: list[str]) -> tuple[dict[str, str], dict[str, Place]]:
    """policyN -> @id over the concatenation, and policyN -> where it is (for validation messages)."""
    by_internal: dict[str, str] = {}
    places: dict[str, Place] = {}
    seen: dict[str, str] = {}
    for path, text, annotated in parsed:
        for position, (ident, place) in enumerate(
                zip((a.get("id") for a in annotated), _places(path, text, len(annotated)), strict=True), start=1):
            internal = f"policy{len(places)}"  # the concatenation's numbering: one per policy, in order
            places[internal] = place
            where = _at(path, place[2])
            if not ident or not ident.strip() or not ident.isprintable():  # it names the policy on a report's line
                problems.append(f"{where}: policy #{position}" + (" has no @id(\"...\") annotation" if not ident else
                                f": @id({json.dumps(ident)}) must be printable text, not blank"))
                continue
            if ident in seen:
                problems.append(f"{where}: duplicate @id(\"{ident}\") (also in {seen[ident]})")
            seen[ident] = where
            by_internal[internal] = ident
    return by_internal, places


def _quorums(parsed: Parsed, problems: list[str]) -> dict[str, int]:
    """@id -> N for each policy annotated `@quorum("N")` (1 ≤ N ≤ MAX_QUORUM; anything else is a problem)."""
    out: dict[str, int] = {}
    for path, text, annotated in parsed:
        for annotation, place in zip(annotated, _places(path, text, len(annotated)), strict=True):
            raw, ident = annotation.get("quorum"), annotation.get("id")
            if raw is None or not ident:
                continue
            if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_QUORUM:
                where = _at(path, mentioned_line(f"`{raw}`", text, place[2], place[3]) or place[2])
                problems.append(f'{where}: policy {ident!r}: @quorum("{raw}") must be a whole number '
                                f"from 1 to {MAX_QUORUM}")
                continue
            out[ident] = int(raw)
    return out


def _schema_line(text: str, message: str) -> int | None:
    """The line of a schema error: a parse error's by parsing, an unknown type's where it is named."""
    if message.startswith("error parsing schema"):
        return syntax_error_line(text, cedarpy.Schema.from_str)
    return mentioned_line(message, text)


def _validation_where(place: Place | None, message: str) -> str | None:
    """`file:line` of a validation error: the line in its policy naming what the error quotes, else the
    policy's first line."""
    if place is None:
        return None
    path, text, first, last = place
    return _at(path, first and (mentioned_line(message, text, first, last) or first))


def _schema_of(directory: Path) -> Path:
    """A directory's schema file; the allow-all set (no schema of its own) is validated against the shipped one."""
    if directory.resolve() == ALLOW_ALL_DIR:
        from gateway.config.load import shipped_policies  # (the config package imports nothing from here)
        return shipped_policies() / SCHEMA_FILE
    return directory / SCHEMA_FILE


def load_policies(directory: Path, schema_path: Path | None = None) -> LoadedPolicies:
    """Parse and validate a policy directory; raise PolicyLoadError listing every problem."""
    problems: list[str] = []
    source = str(directory)
    if not directory.is_dir():
        raise PolicyLoadError(source, [f"{directory}: not a directory"])
    paths = policy_files(directory)
    if not paths:
        problems.append(f"{directory}: no *.cedar policy files")
    schema_path = schema_path or _schema_of(directory)
    schema_text = _read(schema_path, problems) if schema_path.exists() else None
    if schema_text is None and not problems:
        problems.append(f"{schema_path}: missing schema (policies are validated against it)")
    schema: cedarpy.Schema | None = None
    if schema_text is not None:
        try:
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as exc:
            problems.append(f"{_at(schema_path, _schema_line(schema_text, str(exc)))}: invalid schema: {exc}")
    parsed = _parse_files(paths, problems)
    by_internal, places = _id_map(parsed, problems)
    files = {internal: _at(path, first) for internal, (path, _t, first, _l) in places.items()}
    quorums = _quorums(parsed, problems)
    text = "\n".join(t for _p, t, _ids in parsed)
    est: Any = None  # the set's JSON form, once it is known to parse
    if schema is not None and parsed:
        # The files that parsed are validated whatever else is wrong (another file's syntax, a missing @id):
        # every problem is listed at once, not one kind per run.
        names = {**{internal: "(no @id)" for internal in places}, **by_internal}
        result = cedarpy.validate_policies(text, schema, release_gil=True)
        for error in sorted(result.errors, key=lambda e: (policy_order(e.policy_id), e.error)):  # hash order
            where = _validation_where(places.get(error.policy_id), error.error) or str(directory)
            name = names.get(error.policy_id, error.policy_id)
            problems.append(f"{where}: policy {name!r}: {rename_ids(error.error, names)}")
        est = json.loads(cedarpy.policies_to_json_str(text))
        problems.extend(unknown_args(est, schema, files, names, str(directory)))
        problems.extend(unknown_attrs(est, schema, files, names, str(directory)))
        problems.extend(membership_problems(est, schema, files, names, str(directory)))
        problems.extend(time_problems(est, files, names, str(directory)))
        problems.extend(value_problems(est, files, names, str(directory)))
        problems.extend(entity_problems(est, files, names, str(directory)))
    if problems or schema is None or schema_text is None:
        raise PolicyLoadError(source, problems)
    types = context_types(schema)
    if types is None:  # only a rendering this reader does not know; the policies themselves are valid
        log.warning("%s: the schema's types could not be read; argument types are not checked", schema_path)
    digest = hashlib.sha256()
    for path, body in [(schema_path, schema_text), *((p, t) for p, t, _ in parsed)]:
        digest.update(path.name.encode() + b"\0" + body.encode() + b"\0")
    return LoadedPolicies(
        policy_set=cedarpy.PolicySet.from_str(text, release_gil=True), schema=schema,
        version="sha256:" + digest.hexdigest()[:16], source=source,
        files=tuple(str(p) for p, _t, _i in parsed), id_by_internal=by_internal, quorum_by_id=quorums,
        context_reads=context_tree(est), context_types=types or {}, agent_types=agent_types(schema),
        approval_args=_approval_args(est, schema))


def _approval_args(est: Any, schema: cedarpy.Schema) -> tuple[Tree | None, Type] | None:
    """What of `resource.args` some policy reads, with Approval's declared `args` type (None: nothing to check)."""
    typ = approval_args_type(schema)
    if typ is None:
        return None
    reads = context_tree(est, "resource")
    if reads is None:  # `resource` used as a whole value: all of it may matter
        return None, typ
    if "args" not in reads:
        return None
    return reads["args"], typ
