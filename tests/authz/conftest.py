"""Fixtures for the authorization tests: the shipped policies, a writable copy, an engine factory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from authz_helpers import SHIPPED

from gateway.authz.engine import PolicyEngine
from gateway.config.model import PoliciesConfig


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped policies (without the tests/ cases)."""
    target = tmp_path / "policies"
    target.mkdir()
    for path in SHIPPED.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    return target


@pytest.fixture
def engine_factory() -> Callable[..., PolicyEngine]:
    def make(directory: Path = SHIPPED, environment: str = "dev", **kwargs: Any) -> PolicyEngine:
        config_args = {k: kwargs.pop(k) for k in ("shadow_dir", "watch") if k in kwargs}
        engine = PolicyEngine(PoliciesConfig(dir=directory, **config_args), environment, **kwargs)
        engine.load_sync()
        return engine
    return make


@pytest.fixture
def engine(engine_factory: Callable[..., PolicyEngine]) -> PolicyEngine:
    return engine_factory()
