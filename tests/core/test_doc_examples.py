"""Every YAML example in the docs is valid: config blocks pass the config model, policy-case blocks parse.

A block that shows a few sections (a fragment) is checked with the sections every config needs
(`upstreams`, `policies`) added; `${VAR}` references get a value, so the YAML around them is what is
checked. The Compose stack's customs.yaml is checked the same way.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.support.doc_blocks import DOC_PAGES, REPO, fenced_blocks

PAGES = [*DOC_PAGES, REPO / "compose" / "README.md"]
ENV = {"WEBHOOK_SECRET": "s", "CRM_CLIENT_SECRET": "s", "SEARCH_API_KEY": "k", "REDIS_URL": "redis://r:6379/0"}


def _blocks() -> list[Any]:
    return fenced_blocks(PAGES, "yaml")


@pytest.mark.parametrize("block", _blocks())
def test_documented_yaml_example_is_valid(block: str) -> None:
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    if "cases" in data:  # a policy test file (docs/policies.md), not a config
        assert isinstance(data["cases"], list)
        return
    data.setdefault("upstreams", [{"name": "example", "url": "http://127.0.0.1:9001/mcp"}])
    data.setdefault("policies", {"dir": str(REPO / "policies")})
    parse_config(data, env=ENV, base=REPO)


def test_compose_config_is_valid() -> None:
    parse_config(yaml.safe_load((REPO / "compose" / "customs.yaml").read_text()), env=ENV, base=REPO)


def _config_keys(model: type, prefix: str = "", seen: frozenset[type] = frozenset()) -> list[str]:
    """Every key path of the config models (`store.redis.max_connections`), nested models included."""
    from pydantic import BaseModel

    keys: list[str] = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        key = field.alias or name
        keys.append(prefix + key)
        for kind in (field.annotation, *getattr(field.annotation, "__args__", ())):
            for inner in (kind, *getattr(kind, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    keys += _config_keys(inner, f"{prefix}{key}.", seen | {model})
    return keys


def test_every_config_key_is_documented() -> None:
    from gateway.config.model import Config

    docs = "\n".join(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))
    missing = [key for key in _config_keys(Config)
               if not re.search(rf"\b{re.escape(key.rsplit('.', 1)[-1])}\b", docs)]
    assert not missing, f"config keys no page under docs/ names: {missing}"
