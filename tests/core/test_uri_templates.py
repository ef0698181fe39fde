"""Level-1 URI template matching, and the labels a resource URI gets from the labelled templates it
expands from (its own entry's first, the stricter value where several templates set one)."""

from __future__ import annotations

import pytest

from gateway.catalog import Catalog
from gateway.config.model import UpstreamConfig
from gateway.uri_templates import expands_to


@pytest.mark.parametrize(("template", "uri"), [
    ("fake://items/{id}", "fake://items/7"),
    ("fake://items/{id}", "fake://items/a%2Fb"),
    ("fake://items/{id}", "fake://items/"),  # an empty value expands to nothing
    ("file:///{dir}/{name}.txt", "file:///docs/a.b.txt"),
    ("fake://q?x={x.y}", "fake://q?x=1"),
])
def test_level_one_expansions_match(template: str, uri: str) -> None:
    assert expands_to(template, uri)


@pytest.mark.parametrize(("template", "uri"), [
    ("fake://items/{id}", "fake://items/a/b"),  # a value never holds `/`, `?` or `#`
    ("fake://items/{id}", "fake://items/a?b"),
    ("fake://items/{id}", "fake://other/7"),
    ("fake://items/{+path}", "fake://items/7"),  # beyond level 1: not a template here
    ("fake://items/{a,b}", "fake://items/7"),
    ("fake://items/{id", "fake://items/{id"),
    ("fake://a.b/{id}", "fake://aXb/1"),  # literals are literal
    ("fake://items/7", "fake://items/7"),  # no expression: no template
])
def test_other_uris_do_not_match(template: str, uri: str) -> None:
    assert not expands_to(template, uri)


def test_resource_labels_come_from_matching_templates_under_the_uris_own() -> None:
    config = UpstreamConfig.model_validate({"name": "mem", "command": ["true"], "tools": {
        "mem://{kind}/{id}": {"sensitivity": "confidential", "leaves_org": False},
        "mem://docs/{id}": {"sensitivity": "restricted", "leaves_org": True},
        "mem://docs/open": {"sensitivity": "public"},
    }})
    catalog = Catalog([config])
    doc = catalog.resource("mem", "mem://docs/9")
    assert (doc.sensitivity, doc.leaves_org) == ("restricted", True)  # the stricter of both templates
    assert catalog.resource("mem", "mem://docs/open").sensitivity == "public"  # its own label wins
    assert catalog.resource("mem", "mem://docs/open").leaves_org is True  # the label it leaves unset
    assert catalog.resource("mem", "mem://logs/1").sensitivity == "confidential"
    assert catalog.resource("mem", "mem://docs/{id}").sensitivity == "restricted"  # a template by its own key
    assert catalog.named("mem", "mem://docs/9").sensitivity == "internal"  # prompts: by name only
