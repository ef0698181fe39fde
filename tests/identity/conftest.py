"""Fixtures for identity tests: a real test issuer, a resource URL and an identifier factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import AgentRecord, IdentityConfig
from gateway.identity import JwtIdentifier
from tests.support.tokens import TestIssuer

RESOURCE = "http://gw.test:8700"
AUDIENCE = f"{RESOURCE}/mcp"


class Clock:
    """A settable clock (wall and monotonic share it) so time-dependent paths need no sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def issuer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("issuer")


@pytest.fixture(scope="session")
def issuer(issuer_dir: Path) -> TestIssuer:
    """One issuer (RSA key generation is the slow part) shared by tests that do not rotate keys."""
    return TestIssuer(issuer_dir)


MakeIdentifier = Callable[..., Awaitable[JwtIdentifier]]


@pytest.fixture
async def make_identifier() -> AsyncIterator[MakeIdentifier]:
    """Build and start a JwtIdentifier from issuer config dicts; closed after the test."""
    made: list[JwtIdentifier] = []

    async def make(*issuers: dict[str, Any], agents: dict[str, Any] | None = None, clock_skew_s: int = 30,
                   **kwargs: Any) -> JwtIdentifier:
        config = IdentityConfig.model_validate({"mode": "jwt", "issuers": list(issuers),
                                                "clock_skew_s": clock_skew_s})
        registry = {key: AgentRecord.model_validate(value) for key, value in (agents or {}).items()}
        identifier = JwtIdentifier(config, registry, RESOURCE, None, **kwargs)
        await identifier.start()
        made.append(identifier)
        return identifier

    yield make
    for identifier in made:
        await identifier.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
