"""Fixtures for telemetry tests: a real OTLP receiver and telemetry owners that always get closed; the approval a
held call is waiting for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RunningGateway
from tests.support.otlp import OtlpReceiver


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as receiver:
        yield receiver


async def first_pending(gw: RunningGateway, approver: str) -> str:
    """The id of the first pending approval the approvals API lists to `approver` (a bearer token), once one is."""
    deadline = asyncio.get_running_loop().time() + 10
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {approver}"}) as http:
        while True:
            async with http.get(f"{gw.url}/api/approvals?state=pending") as resp:
                items = (await resp.json())["items"]
            if items:
                return str(items[0]["id"])
            assert asyncio.get_running_loop().time() < deadline, "no pending approval appeared"
            await asyncio.sleep(0.05)  # polling the approvals API, bounded by the deadline
