"""A tool's Cedar attributes from its MCP annotations: only booleans count, anything else is the spec default."""

from __future__ import annotations

import pytest

from gateway.catalog import tool_info
from gateway.config.model import UpstreamConfig

UPSTREAM = UpstreamConfig.model_validate({"name": "inventory", "url": "http://127.0.0.1:9/mcp"})


@pytest.mark.parametrize("hint", ["false", "true", 1, 0, None, [], {"x": 1}])
def test_a_read_only_hint_that_is_no_boolean_leaves_the_spec_defaults(hint: object) -> None:
    """`readOnlyHint: "false"` (a string) was not read-only, yet counted as read-only when choosing the default of
    destructiveHint, so the tool came out non-destructive: a forbid on resource.destructive missed it."""
    tool = tool_info(UPSTREAM, {"name": "set_stock", "annotations": {"readOnlyHint": hint}})
    assert (tool.read_only, tool.destructive, tool.idempotent, tool.open_world) == (False, True, False, True)


def test_boolean_hints_are_taken() -> None:
    tool = tool_info(UPSTREAM, {"name": "get_stock", "annotations": {"readOnlyHint": True}})
    assert (tool.read_only, tool.destructive) == (True, False)
    tool = tool_info(UPSTREAM, {"name": "x", "annotations": {"readOnlyHint": False, "destructiveHint": False}})
    assert (tool.read_only, tool.destructive) == (False, False)
