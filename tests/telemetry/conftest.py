"""Fixtures for telemetry tests: a real OTLP receiver and telemetry owners that always get closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.otlp import OtlpReceiver


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as receiver:
        yield receiver
