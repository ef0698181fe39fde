"""The YAML a config (or a policy test file) is read from: plain data only, and refusing what YAML would take
silently or what no reader could walk (a key given twice, an alias loop, runaway nesting or alias expansion)."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.problems import path_text

MAX_DEPTH = 100  # levels of nesting: a real config has about 8; thousands ran out of Python's stack
MAX_VALUES = 1_000_000  # values once aliases are expanded (every later pass walks them expanded)


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error: YAML keeps the
    last one silently, so a second `upstreams:` would drop the first list without a word. Keys a merge
    (`<<: *anchor`) brings in may still be overridden, as YAML intends. A document no config can be read from
    is a YAML error at its line too, not a RecursionError traceback or a hang: an alias inside the value it
    names (a loop), nesting deeper than MAX_DEPTH (as written, or through aliases), or aliases expanding to more
    than MAX_VALUES values."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # None: a key given twice raises at once (policy test files); a list: each is kept here, with the line of
        # the first, and the document read on, so a config's every problem can be listed (`load_listing_duplicates`).
        self.duplicates: list[tuple[yaml.Node, int]] | None = None
        self._open: list[str | None] = []  # anchors of the nodes being composed, outermost first
        self._sizes: dict[int, int] = {}  # a composed node's value count, aliases expanded
        self._depths: dict[int, int] = {}  # a composed node's levels of nesting, itself included, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(None, None, f"the alias *{event.anchor} holds the value it is "
                                                  "part of (a config is a tree, not a loop)", self._mark(event))
            return self._compose(parent, index)
        if len(self._open) >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than the {MAX_DEPTH} levels a config may "
                                              "have", self._mark(event))
        self._open.append(event.anchor)
        try:
            node = self._compose(parent, index)
        finally:
            self._open.pop()
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        size = self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in children)
        if size > MAX_VALUES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_VALUES:,} values once its aliases are "
                                              "expanded", self._mark(event))
        # An alias brings in its value's levels: values fewer than MAX_DEPTH deep each, nested through aliases,
        # ran out of Python's stack in the passes that walk the document expanded, as deep brackets did.
        depth = self._depths[id(node)] = 1 + max((self._depths.get(id(child), 1) for child in children), default=0)
        if len(self._open) + depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than the {MAX_DEPTH} levels a config may "
                                              "have once its aliases are expanded", self._mark(event))
        return node

    @staticmethod
    def _mark(event: yaml.Event) -> yaml.Mark | None:
        mark = event.start_mark
        return mark if isinstance(mark, yaml.Mark) else None

    def _compose(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        node = super().compose_node(parent, index)
        assert node is not None  # (only a document's end composes None: compose_node is never asked then)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                if self.duplicates is not None:
                    self.duplicates.append((key_node, seen[key]))
                    continue
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (also on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def strict_yaml_load(text: str) -> Any:
    """yaml.safe_load, refusing a key given twice in one mapping, an alias loop, nesting deeper than MAX_DEPTH and
    aliases expanding past MAX_VALUES (each a yaml.YAMLError with its line)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only


def load_listing_duplicates(text: str) -> tuple[Any, list[str]]:
    """What strict_yaml_load reads, and a problem at its path for each key given twice in one mapping, instead of an
    error at the first: a config's other problems are listed with them (the document is read as YAML reads it, the
    last of equal keys kept, so that no problem it would cause is made up)."""
    loader = _StrictLoader(text)
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    if not loader.duplicates or node is None:
        return data, []
    paths = _key_paths(node)
    return data, [f"{path_text(paths.get(id(key), ()))}: key given twice (line {key.start_mark.line + 1}, column "
                  f"{key.start_mark.column + 1}; first on line {first + 1}): YAML would keep the last one silently"
                  for key, first in sorted(loader.duplicates, key=lambda pair: pair[0].start_mark.line)]


def _key_paths(root: yaml.Node) -> dict[int, tuple[int | str, ...]]:
    """The document path of every mapping key node (by id), as problems name paths: keys as written, list indexes."""
    paths: dict[int, tuple[int | str, ...]] = {}
    stack: list[tuple[yaml.Node, tuple[int | str, ...]]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias: its first place names it
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                where = (*path, str(key.value)) if isinstance(key, yaml.ScalarNode) else path
                paths.setdefault(id(key), where)
                stack.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
    return paths
